//! The controller's SQLite store: fleet registry, enrolment tokens, node
//! history, ingested events (stored once by event id) and the per-node
//! command queue.
//!
//! One connection behind a mutex; async callers go through
//! `spawn_blocking` ([`Db::call`]). Ingestion commits a whole batch per
//! transaction, so throughput is bounded by batches, not events.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use edgedesk_common::envelope::PublicKeys;
use edgedesk_common::event::{Event, EventBody};
use edgedesk_common::sync::{Command, Stream};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open database {path}: {message}")]
    Open { path: String, message: String },
    #[error("database schema version {found} is newer than this build supports ({supported})")]
    SchemaTooNew { found: u32, supported: u32 },
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("corrupt stored value: {0}")]
    Corrupt(String),
    #[error("store task failed: {0}")]
    Task(String),
}

/// Why an enrolment was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnrollError {
    #[error("unknown enrolment token")]
    UnknownToken,
    #[error("enrolment token already used")]
    TokenUsed,
    #[error("enrolment token expired")]
    TokenExpired,
    #[error("enrolment token was issued for node {0}")]
    TokenForOtherNode(String),
    #[error("node id {0} is already enrolled")]
    AlreadyEnrolled(String),
}

pub fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

const MIGRATIONS: &[&str] = &[
    r#"
    CREATE TABLE tokens (
        hash        TEXT PRIMARY KEY,     -- sha256 of the one-time token
        node_id     TEXT,                 -- optional: only this node may use it
        created_at  INTEGER NOT NULL,
        expires_at  INTEGER NOT NULL,
        used_at     INTEGER,
        used_by     TEXT
    );
    CREATE TABLE nodes (
        id             TEXT PRIMARY KEY,
        sign_key       TEXT NOT NULL,
        seal_key       TEXT NOT NULL,
        mqtt_pass_hash TEXT NOT NULL,
        labels         TEXT NOT NULL DEFAULT '{}',
        enrolled_at    INTEGER NOT NULL,
        revoked_at     INTEGER,
        online         INTEGER NOT NULL DEFAULT 0,
        last_seen      INTEGER,
        heartbeat      TEXT,               -- last common::sync::Heartbeat as JSON
        seq_high       INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE node_history (
        id      INTEGER PRIMARY KEY,
        node_id TEXT NOT NULL,
        at      INTEGER NOT NULL,
        kind    TEXT NOT NULL,            -- enrolled, online, offline, revoked, labels, refused
        detail  TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX node_history_node ON node_history(node_id, id);
    CREATE TABLE events (
        id          TEXT PRIMARY KEY,     -- event id from the node: stored once
        node_id     TEXT NOT NULL,
        kind        TEXT NOT NULL,
        at          INTEGER NOT NULL,     -- when it happened (node clock)
        received_at INTEGER NOT NULL,
        body        TEXT NOT NULL
    );
    CREATE INDEX events_node_at ON events(node_id, at);
    CREATE INDEX events_kind_at ON events(kind, at);
    CREATE INDEX events_at ON events(at);
    CREATE TABLE commands (
        id         TEXT PRIMARY KEY,
        node_id    TEXT NOT NULL,
        kind       TEXT NOT NULL,
        args       TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        sent_at    INTEGER,
        acked_at   INTEGER,
        ok         INTEGER,
        detail     TEXT
    );
    CREATE INDEX commands_pending ON commands(node_id, acked_at, created_at);
"#,
    r#"
    -- Ordered command streams (per conversation): the last seq given out.
    ALTER TABLE commands ADD COLUMN stream TEXT;
    ALTER TABLE commands ADD COLUMN stream_seq INTEGER;
    CREATE TABLE command_streams (
        node_id TEXT NOT NULL,
        key     TEXT NOT NULL,
        seq     INTEGER NOT NULL,
        PRIMARY KEY (node_id, key)
    );
"#,
];

/// A node as listed by the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRow {
    pub id: String,
    pub keys: PublicKeys,
    pub labels: BTreeMap<String, String>,
    pub enrolled_at: i64,
    pub revoked_at: Option<i64>,
    pub online: bool,
    pub last_seen: Option<i64>,
    pub heartbeat: Option<serde_json::Value>,
    pub seq_high: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryRow {
    pub at: i64,
    pub kind: String,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredEvent {
    pub id: String,
    pub node_id: String,
    pub kind: String,
    pub at: i64,
    pub received_at: i64,
    pub event: Event,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EventQuery {
    pub node: Option<String>,
    pub kind: Option<String>,
    /// Unix ms, inclusive.
    pub since: Option<i64>,
    /// Unix ms, exclusive.
    pub until: Option<i64>,
    pub limit: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandRow {
    pub command: Command,
    pub node_id: String,
    pub sent_at: Option<i64>,
    pub acked_at: Option<i64>,
    pub ok: Option<bool>,
    pub detail: Option<String>,
}

#[derive(Clone)]
pub struct Db {
    conn: Arc<Mutex<Connection>>,
}

impl Db {
    pub fn open(path: &Path) -> Result<Db, StoreError> {
        let open_err = |message: String| StoreError::Open {
            path: path.display().to_string(),
            message,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| open_err(e.to_string()))?;
        }
        let mut conn = Connection::open(path).map_err(|e| open_err(e.to_string()))?;
        let _: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        // Design: FULL — an event acknowledged to a node (which then deletes
        // it) must survive a power cut here; ingestion batches amortise fsync.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
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
        }
        Ok(Db {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

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

// ---- tokens and enrolment ---------------------------------------------------

pub fn create_token(
    conn: &Connection,
    token: &str,
    node_id: Option<&str>,
    now: i64,
    ttl_ms: i64,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO tokens (hash, node_id, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
        params![sha256_hex(token), node_id, now, now + ttl_ms],
    )?;
    Ok(())
}

/// Consume `token` and register the node, atomically.
pub fn enroll(
    conn: &mut Connection,
    token: &str,
    node_id: &str,
    keys: &PublicKeys,
    mqtt_pass_hash: &str,
    now: i64,
) -> Result<Result<(), EnrollError>, StoreError> {
    let tx = conn.transaction()?;
    let row: Option<(Option<String>, i64, Option<i64>)> = tx
        .query_row(
            "SELECT node_id, expires_at, used_at FROM tokens WHERE hash = ?1",
            [sha256_hex(token)],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    let Some((for_node, expires_at, used_at)) = row else {
        return Ok(Err(EnrollError::UnknownToken));
    };
    if used_at.is_some() {
        return Ok(Err(EnrollError::TokenUsed));
    }
    if expires_at < now {
        return Ok(Err(EnrollError::TokenExpired));
    }
    if let Some(n) = for_node.filter(|n| n != node_id) {
        return Ok(Err(EnrollError::TokenForOtherNode(n)));
    }
    let exists: bool = tx.query_row(
        "SELECT EXISTS(SELECT 1 FROM nodes WHERE id = ?1)",
        [node_id],
        |r| r.get(0),
    )?;
    if exists {
        return Ok(Err(EnrollError::AlreadyEnrolled(node_id.into())));
    }
    tx.execute(
        "UPDATE tokens SET used_at = ?2, used_by = ?3 WHERE hash = ?1",
        params![sha256_hex(token), now, node_id],
    )?;
    tx.execute(
        "INSERT INTO nodes (id, sign_key, seal_key, mqtt_pass_hash, enrolled_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![node_id, keys.sign, keys.seal, mqtt_pass_hash, now],
    )?;
    add_history(&tx, node_id, now, "enrolled", "")?;
    tx.commit()?;
    Ok(Ok(()))
}

pub fn add_history(
    conn: &Connection,
    node: &str,
    at: i64,
    kind: &str,
    detail: &str,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO node_history (node_id, at, kind, detail) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![node, at, kind, detail])?;
    Ok(())
}

/// Keep the newest `keep` history rows of `node`.
pub fn trim_history(conn: &Connection, node: &str, keep: usize) -> Result<(), StoreError> {
    conn.execute(
        "DELETE FROM node_history WHERE node_id = ?1 AND id NOT IN
           (SELECT id FROM node_history WHERE node_id = ?1 ORDER BY id DESC LIMIT ?2)",
        params![node, keep as i64],
    )?;
    Ok(())
}

// ---- nodes ----------------------------------------------------------------

const NODE_COLUMNS: &str = "id, sign_key, seal_key, labels, enrolled_at, revoked_at, online, last_seen, heartbeat, seq_high";

fn node_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<NodeRow> {
    let labels: String = r.get(3)?;
    let hb: Option<String> = r.get(8)?;
    Ok(NodeRow {
        id: r.get(0)?,
        keys: PublicKeys {
            sign: r.get(1)?,
            seal: r.get(2)?,
        },
        labels: serde_json::from_str(&labels).unwrap_or_default(),
        enrolled_at: r.get(4)?,
        revoked_at: r.get(5)?,
        online: r.get(6)?,
        last_seen: r.get(7)?,
        heartbeat: hb.and_then(|h| serde_json::from_str(&h).ok()),
        seq_high: r.get::<_, i64>(9)? as u64,
    })
}

pub fn nodes(conn: &Connection) -> Result<Vec<NodeRow>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!("SELECT {NODE_COLUMNS} FROM nodes ORDER BY id"))?;
    let rows = stmt.query_map([], node_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn node(conn: &Connection, id: &str) -> Result<Option<NodeRow>, StoreError> {
    Ok(conn
        .prepare_cached(&format!("SELECT {NODE_COLUMNS} FROM nodes WHERE id = ?1"))?
        .query_row([id], node_from_row)
        .optional()?)
}

/// (node id, sha256 of its broker password) of every enrolled, unrevoked node.
pub fn broker_credentials(conn: &Connection) -> Result<Vec<(String, String)>, StoreError> {
    let mut stmt = conn.prepare("SELECT id, mqtt_pass_hash FROM nodes WHERE revoked_at IS NULL")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn set_labels(
    conn: &Connection,
    id: &str,
    labels: &BTreeMap<String, String>,
    now: i64,
) -> Result<bool, StoreError> {
    let json = serde_json::to_string(labels).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let n = conn.execute(
        "UPDATE nodes SET labels = ?2 WHERE id = ?1",
        params![id, json],
    )?;
    if n > 0 {
        add_history(conn, id, now, "labels", &json)?;
    }
    Ok(n > 0)
}

pub fn revoke(conn: &Connection, id: &str, now: i64) -> Result<bool, StoreError> {
    let n = conn.execute(
        "UPDATE nodes SET revoked_at = ?2, online = 0 WHERE id = ?1 AND revoked_at IS NULL",
        params![id, now],
    )?;
    if n > 0 {
        add_history(conn, id, now, "revoked", "")?;
    }
    Ok(n > 0)
}

pub fn set_online(
    conn: &Connection,
    id: &str,
    online: bool,
    now: i64,
    reason: &str,
) -> Result<(), StoreError> {
    conn.prepare_cached("UPDATE nodes SET online = ?2 WHERE id = ?1")?
        .execute(params![id, online])?;
    add_history(
        conn,
        id,
        now,
        if online { "online" } else { "offline" },
        reason,
    )
}

pub fn record_heartbeat(
    conn: &Connection,
    id: &str,
    hb: &serde_json::Value,
    now: i64,
) -> Result<(), StoreError> {
    conn.prepare_cached("UPDATE nodes SET heartbeat = ?2, last_seen = ?3 WHERE id = ?1")?
        .execute(params![id, hb.to_string(), now])?;
    Ok(())
}

pub fn touch(conn: &Connection, id: &str, seq_high: u64, now: i64) -> Result<(), StoreError> {
    conn.prepare_cached(
        "UPDATE nodes SET last_seen = ?3, seq_high = MAX(seq_high, ?2) WHERE id = ?1",
    )?
    .execute(params![id, seq_high as i64, now])?;
    Ok(())
}

pub fn history(conn: &Connection, id: &str, limit: usize) -> Result<Vec<HistoryRow>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT at, kind, detail FROM node_history WHERE node_id = ?1 ORDER BY id DESC LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![id, limit as i64], |r| {
        Ok(HistoryRow {
            at: r.get(0)?,
            kind: r.get(1)?,
            detail: r.get(2)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

// ---- events ---------------------------------------------------------------

/// Store events idempotently (call inside the caller's transaction); returns
/// the indices of those that were new.
pub fn ingest(
    tx: &Connection,
    node: &str,
    events: &[Event],
    now: i64,
) -> Result<Vec<usize>, StoreError> {
    let mut new = Vec::new();
    {
        let mut stmt = tx.prepare_cached(
            "INSERT OR IGNORE INTO events (id, node_id, kind, at, received_at, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        for (i, e) in events.iter().enumerate() {
            // A summary's transcript is kept once, by the history store (chats).
            let stripped;
            let e = match &e.body {
                EventBody::ConversationSummary(s) if !s.transcript.is_empty() => {
                    let mut c = e.clone();
                    if let EventBody::ConversationSummary(s) = &mut c.body {
                        s.transcript.clear();
                    }
                    stripped = c;
                    &stripped
                }
                _ => e,
            };
            let body =
                serde_json::to_string(e).map_err(|err| StoreError::Corrupt(err.to_string()))?;
            if stmt.execute(params![e.id, node, e.body.kind(), e.at, now, body])? > 0 {
                new.push(i);
            }
        }
    }
    Ok(new)
}

pub fn events(conn: &Connection, q: &EventQuery) -> Result<Vec<StoredEvent>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, node_id, kind, at, received_at, body FROM events
         WHERE (?1 IS NULL OR node_id = ?1) AND (?2 IS NULL OR kind = ?2)
           AND (?3 IS NULL OR at >= ?3) AND (?4 IS NULL OR at < ?4)
         ORDER BY at, id LIMIT ?5",
    )?;
    let limit = q.limit.unwrap_or(1000).min(100_000) as i64;
    let rows = stmt.query_map(params![q.node, q.kind, q.since, q.until, limit], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get::<_, String>(5)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, node_id, kind, at, received_at, body) = row?;
        let event = serde_json::from_str(&body).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        out.push(StoredEvent {
            id,
            node_id,
            kind,
            at,
            received_at,
            event,
        });
    }
    Ok(out)
}

pub fn event_count(conn: &Connection) -> Result<u64, StoreError> {
    Ok(conn.query_row("SELECT COUNT(*) FROM events", [], |r| r.get::<_, i64>(0))? as u64)
}

// ---- commands ---------------------------------------------------------------

/// Queue `cmd` for `node`. A command with a stream gets the stream's next
/// `seq` here (the one in `cmd` is ignored); returns the command as queued.
pub fn enqueue_command(
    conn: &Connection,
    node: &str,
    cmd: &Command,
    sent_at: Option<i64>,
) -> Result<Command, StoreError> {
    let mut cmd = cmd.clone();
    if let Some(stream) = cmd.stream.as_mut() {
        stream.seq =
            conn.prepare_cached(
                "INSERT INTO command_streams (node_id, key, seq) VALUES (?1, ?2, 1)
                 ON CONFLICT(node_id, key) DO UPDATE SET seq = seq + 1 RETURNING seq",
            )?
            .query_row(params![node, stream.key], |r| r.get::<_, i64>(0))? as u64;
    }
    conn.execute(
        "INSERT INTO commands (id, node_id, kind, args, created_at, sent_at, stream, stream_seq)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            cmd.id,
            node,
            cmd.kind,
            cmd.args.to_string(),
            cmd.issued_at,
            sent_at,
            cmd.stream.as_ref().map(|s| s.key.as_str()),
            cmd.stream.as_ref().map(|s| s.seq as i64)
        ],
    )?;
    Ok(cmd)
}

fn command_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Command> {
    let args: String = r.get("args")?;
    let key: Option<String> = r.get("stream")?;
    let seq: Option<i64> = r.get("stream_seq")?;
    Ok(Command {
        id: r.get("id")?,
        kind: r.get("kind")?,
        args: serde_json::from_str(&args).unwrap_or(serde_json::Value::Null),
        issued_at: r.get("created_at")?,
        stream: key.zip(seq).map(|(key, seq)| Stream {
            key,
            seq: seq as u64,
        }),
    })
}

/// Unacknowledged commands of `node`, oldest first.
pub fn pending_commands(conn: &Connection, node: &str) -> Result<Vec<Command>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, kind, args, created_at, stream, stream_seq FROM commands
         WHERE node_id = ?1 AND acked_at IS NULL ORDER BY rowid",
    )?;
    let rows = stmt.query_map([node], command_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn mark_sent(conn: &Connection, id: &str, now: i64) -> Result<(), StoreError> {
    conn.prepare_cached("UPDATE commands SET sent_at = ?2 WHERE id = ?1")?
        .execute(params![id, now])?;
    Ok(())
}

/// Record a node's acknowledgement; false if no such pending command of that node.
pub fn ack_command(
    conn: &Connection,
    node: &str,
    id: &str,
    ok: bool,
    detail: &str,
    now: i64,
) -> Result<bool, StoreError> {
    let n = conn
        .prepare_cached(
            "UPDATE commands SET acked_at = ?3, ok = ?4, detail = ?5 WHERE id = ?1 AND node_id = ?2 AND acked_at IS NULL",
        )?
        .execute(params![id, node, now, ok, detail])?;
    Ok(n > 0)
}

pub fn commands(
    conn: &Connection,
    node: &str,
    limit: usize,
) -> Result<Vec<CommandRow>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, kind, args, created_at, sent_at, acked_at, ok, detail, stream, stream_seq FROM commands
         WHERE node_id = ?1 ORDER BY created_at DESC, id LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![node, limit as i64], |r| {
        Ok(CommandRow {
            command: command_from_row(r)?,
            node_id: node.to_owned(),
            sent_at: r.get(4)?,
            acked_at: r.get(5)?,
            ok: r.get(6)?,
            detail: r.get(7)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgedesk_common::chat::Lang;
    use edgedesk_common::event::{Escalation, EventBody};

    fn db() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("c.db")).unwrap();
        (dir, db)
    }

    fn keys() -> PublicKeys {
        PublicKeys {
            sign: "s".into(),
            seal: "x".into(),
        }
    }

    #[test]
    fn tokens_are_one_time_and_node_ids_unique() {
        let (_d, db) = db();
        db.with(|c| {
            create_token(c, "t1", None, 0, 1000)?;
            create_token(c, "t2", Some("b"), 0, 1000)?;
            create_token(c, "t3", None, 0, 10)?;
            create_token(c, "t4", None, 0, 1000)?;
            assert_eq!(
                enroll(c, "nope", "a", &keys(), "h", 1)?,
                Err(EnrollError::UnknownToken)
            );
            assert_eq!(enroll(c, "t1", "a", &keys(), "h", 1)?, Ok(()));
            assert_eq!(
                enroll(c, "t1", "z", &keys(), "h", 1)?,
                Err(EnrollError::TokenUsed)
            );
            assert_eq!(
                enroll(c, "t2", "c", &keys(), "h", 1)?,
                Err(EnrollError::TokenForOtherNode("b".into()))
            );
            assert_eq!(
                enroll(c, "t3", "d", &keys(), "h", 50)?,
                Err(EnrollError::TokenExpired)
            );
            assert_eq!(
                enroll(c, "t4", "a", &keys(), "h", 1)?,
                Err(EnrollError::AlreadyEnrolled("a".into()))
            );
            assert_eq!(nodes(c)?.len(), 1);
            assert_eq!(history(c, "a", 10)?[0].kind, "enrolled");
            Ok(())
        })
        .unwrap();
    }

    #[test]
    fn ingest_is_idempotent() {
        let (_d, db) = db();
        let ev = |i: usize| Event {
            id: format!("e{i}"),
            at: i as i64,
            body: EventBody::Escalation(Escalation {
                conversation: "c".into(),
                lang: Lang::En,
                reason: "requested".into(),
                last_text: String::new(),
                intents: vec![],
                transcript: vec![],
            }),
        };
        db.with(|c| {
            let batch: Vec<Event> = (0..10).map(ev).collect();
            assert_eq!(ingest(c, "a", &batch, 5)?.len(), 10);
            assert_eq!(ingest(c, "a", &batch[5..], 6)?.len(), 0);
            assert_eq!(event_count(c)?, 10);
            let q = EventQuery {
                node: Some("a".into()),
                since: Some(3),
                until: Some(7),
                ..Default::default()
            };
            assert_eq!(
                events(c, &q)?.iter().map(|e| e.at).collect::<Vec<_>>(),
                vec![3, 4, 5, 6]
            );
            let q = EventQuery {
                kind: Some("offline_message".into()),
                ..Default::default()
            };
            assert!(events(c, &q)?.is_empty());
            Ok(())
        })
        .unwrap();
    }

    #[test]
    fn command_queue_until_acknowledged() {
        let (_d, db) = db();
        db.with(|c| {
            let cmd = Command {
                id: "k1".into(),
                kind: "ping".into(),
                args: serde_json::json!({}),
                issued_at: 1,
                stream: None,
            };
            enqueue_command(c, "a", &cmd, None)?;
            assert_eq!(pending_commands(c, "a")?, vec![cmd.clone()]);
            assert!(
                !ack_command(c, "b", "k1", true, "", 2)?,
                "another node cannot ack it"
            );
            assert!(ack_command(c, "a", "k1", true, "pong", 2)?);
            assert!(pending_commands(c, "a")?.is_empty());
            assert!(
                !ack_command(c, "a", "k1", true, "", 3)?,
                "acknowledged once"
            );
            Ok(())
        })
        .unwrap();
    }
}
