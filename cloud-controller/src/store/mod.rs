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
pub mod events;
pub mod migrations;
pub mod models;
pub mod nodes;
pub mod rollouts;
pub mod samples;
pub mod seq;
pub mod suggestions;
pub mod tickets;
pub mod trainings;

use std::path::Path;

use rusqlite::Connection;
use sha2::{Digest, Sha256};

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
    #[error("corrupt stored value: {0}")]
    Corrupt(String),
    #[error("store task failed: {0}")]
    Task(String),
}

pub fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// Requests waiting for the store's thread at most.
const QUEUE: usize = 1024;

/// The SQLite connection's thread, shared by the store's methods.
// Design: one owner thread rather than a mutex over the blocking pool: the
// requests of many tasks queue instead of waking pool threads that then
// contend for the lock (the controller spent a third of its CPU in the
// kernel that way under live-chat load).
#[derive(Clone)]
pub struct Db {
    tx: tokio::sync::mpsc::Sender<Job>,
}

impl Db {
    fn start(mut conn: Connection) -> Result<Db, StoreError> {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Job>(QUEUE);
        std::thread::Builder::new()
            .name("controller-store".into())
            .spawn(move || {
                while let Some(job) = rx.blocking_recv() {
                    job(&mut conn);
                }
            })
            .map_err(|e| StoreError::Task(e.to_string()))?;
        Ok(Db { tx })
    }

    /// Run `f` with the connection on the store's thread.
    pub async fn call<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let _ = reply.send(f(conn));
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
    /// Open (creating it 0600) and migrate the database at `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        // Design: FULL — an event acknowledged to a node (which then deletes
        // it) must survive a power cut here; ingestion batches amortise fsync.
        let mut conn =
            edgedesk_support::sqlite::open(path, edgedesk_support::sqlite::Durability::Full)?;
        edgedesk_support::sqlite::migrate(&mut conn, migrations::STEPS)?;
        Ok(Store {
            db: Db::start(conn)?,
        })
    }
}

#[cfg(test)]
pub(crate) fn test_conn() -> Connection {
    let mut c = Connection::open_in_memory().expect("in-memory SQLite");
    edgedesk_support::sqlite::migrate(&mut c, migrations::STEPS).expect("migrations apply");
    c
}
