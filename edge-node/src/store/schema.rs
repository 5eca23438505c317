//! Versioned schema migrations, tracked in SQLite's `user_version`.
//!
//! Each entry runs once, in order, inside a transaction. Never edit a shipped
//! migration: append a new one.

use rusqlite::Connection;

use super::StoreError;

pub const MIGRATIONS: &[&str] = &[
    // 1: sessions, conversations, messages, offline messages, outbox.
    r#"
    CREATE TABLE sessions (
        id              TEXT PRIMARY KEY,
        token_hash      TEXT NOT NULL UNIQUE,   -- sha256 of the bearer token; the token itself is never stored
        created_at      INTEGER NOT NULL,
        last_seen       INTEGER NOT NULL,
        conversation_id TEXT NOT NULL,
        state           TEXT NOT NULL           -- dialog::Conversation as JSON
    );
    CREATE INDEX sessions_last_seen ON sessions(last_seen);
    CREATE TABLE conversations (
        id          TEXT PRIMARY KEY,
        session_id  TEXT NOT NULL,
        lang        TEXT NOT NULL,
        started_at  INTEGER NOT NULL,
        ended_at    INTEGER,
        end_reason  TEXT,
        escalated   INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX conversations_session ON conversations(session_id);
    CREATE INDEX conversations_ended ON conversations(ended_at);
    CREATE TABLE messages (
        id              INTEGER PRIMARY KEY,
        conversation_id TEXT NOT NULL,
        sender          TEXT NOT NULL,
        text            TEXT NOT NULL,
        quick_replies   TEXT,                   -- JSON array or NULL
        intent          TEXT,
        confidence      REAL,
        at              INTEGER NOT NULL
    );
    CREATE INDEX messages_conversation ON messages(conversation_id, id);
    CREATE TABLE offline_messages (
        id              INTEGER PRIMARY KEY,
        event_id        TEXT NOT NULL UNIQUE,
        conversation_id TEXT NOT NULL,
        lang            TEXT NOT NULL,
        name            TEXT NOT NULL,
        contact         TEXT NOT NULL,
        message         TEXT NOT NULL,
        at              INTEGER NOT NULL
    );
    CREATE TABLE outbox (
        seq   INTEGER PRIMARY KEY AUTOINCREMENT,  -- delivery order
        id    TEXT NOT NULL UNIQUE,               -- event id, for idempotent upstream storage
        kind  TEXT NOT NULL,
        at    INTEGER NOT NULL,
        body  TEXT NOT NULL                       -- common::event::Event as JSON
    );
    "#,
    // 2: cloud link state: key/values (identity, counters, replay mark) and
    //    commands received from the controller (executed once, by id).
    r#"
    CREATE TABLE kv (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE commands_in (
        id          TEXT PRIMARY KEY,
        kind        TEXT NOT NULL,
        args        TEXT NOT NULL,
        received_at INTEGER NOT NULL,
        ok          INTEGER NOT NULL,
        detail      TEXT NOT NULL
    );
    "#,
    // 3: ordered command streams (one per conversation with an agent): the
    //    last seq executed.
    r#"
    CREATE TABLE command_streams (
        key TEXT PRIMARY KEY,
        seq INTEGER NOT NULL,
        at  INTEGER NOT NULL
    );
    "#,
    // 4: who wrote an agent line (shown to the visitor with the line).
    r#"
    ALTER TABLE messages ADD COLUMN author TEXT;
    "#,
];

/// Bring the database to the latest schema version.
pub fn migrate(conn: &mut Connection) -> Result<u32, StoreError> {
    let current: u32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let latest = MIGRATIONS.len() as u32;
    if current > latest {
        return Err(StoreError::SchemaTooNew {
            found: current,
            supported: latest,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as u32)?;
        tx.commit()?;
        tracing::info!(version = i + 1, "applied schema migration");
    }
    Ok(latest)
}
