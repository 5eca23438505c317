//! SQLite store: one writer thread, group commit, WAL.
//!
//! A dedicated OS thread owns the connection and serves [`Request`]s from a
//! bounded channel. Turn writes that queue up meanwhile are committed together
//! in one transaction (group commit), so durability costs one fsync per batch,
//! not per message. When the queue is full, senders wait: writes are never
//! dropped (back-pressure reaches the visitor's connection).
//!
//! Every change and the outbox events describing it share one transaction.

mod schema;

use std::path::PathBuf;
use std::thread::JoinHandle;

use edgedesk_common::chat::{HistoryItem, QuickReply, Sender};
use edgedesk_common::event::{Event, EventBody, TranscriptLine};
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot};

use crate::config::{StoreConfig, Synchronous};

pub use schema::MIGRATIONS;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database file or its folder cannot be created or opened.
    #[error("cannot open database {path}: {message}")]
    Open { path: PathBuf, message: String },
    /// The file was written by a newer build.
    #[error("database schema version {found} is newer than this build supports ({supported})")]
    SchemaTooNew { found: u32, supported: u32 },
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// Stored JSON could not be read back.
    #[error("corrupt stored value: {0}")]
    Corrupt(String),
    /// The writer thread has stopped (shutdown or a fatal error).
    #[error("store is closed")]
    Closed,
}

/// A session as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionRow {
    pub id: String,
    pub token_hash: String,
    pub created_at: i64,
    pub last_seen: i64,
    pub conversation_id: String,
    /// `dialog::Conversation` as JSON.
    pub state: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewMessage {
    pub sender: Sender,
    /// The agent who wrote an agent line.
    pub author: Option<String>,
    pub text: String,
    pub quick_replies: Vec<QuickReply>,
    pub intent: Option<String>,
    pub confidence: Option<f32>,
    pub at: i64,
}

/// Everything one visitor turn changes, committed atomically.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnWrite {
    pub session: SessionRow,
    /// Set when this turn starts a conversation: (lang, started_at).
    pub conversation_start: Option<(String, i64)>,
    /// Set when this turn ends the current conversation: (ended_at, reason).
    pub conversation_end: Option<(i64, String)>,
    pub escalated: bool,
    pub messages: Vec<NewMessage>,
    pub events: Vec<Event>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct RetentionStats {
    pub messages: usize,
    pub conversations: usize,
    pub sessions: usize,
    pub offline_messages: usize,
}

/// Outcome of enforcing the outbox disk budget.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Compaction {
    /// Bytes of event bodies left in the outbox.
    pub bytes: u64,
    /// Routine summaries dropped by this call.
    pub dropped: u64,
    /// Dropped since the database was created.
    pub dropped_total: u64,
}

/// A command from the controller, recorded with its result.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandIn {
    pub id: String,
    pub kind: String,
    pub args: String,
    pub received_at: i64,
    pub ok: bool,
    pub detail: String,
    /// The command's stream position, recorded with it.
    pub stream: Option<(String, u64)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEntry {
    pub seq: i64,
    pub event: Event,
}

/// Where a turn's outcome (its message ids) is sent.
type CommitReply = oneshot::Sender<Result<Vec<i64>, StoreError>>;

enum Request {
    Commit(TurnWrite, CommitReply),
    Session(
        String,
        oneshot::Sender<Result<Option<SessionRow>, StoreError>>,
    ),
    CommandResult(
        String,
        oneshot::Sender<Result<Option<(bool, String)>, StoreError>>,
    ),
    SessionByConversation(
        String,
        oneshot::Sender<Result<Option<SessionRow>, StoreError>>,
    ),
    SessionById(
        String,
        oneshot::Sender<Result<Option<SessionRow>, StoreError>>,
    ),
    History(
        String,
        usize,
        oneshot::Sender<Result<Vec<HistoryItem>, StoreError>>,
    ),
    IdleSessions(
        i64,
        usize,
        oneshot::Sender<Result<Vec<SessionRow>, StoreError>>,
    ),
    Retention(i64, oneshot::Sender<Result<RetentionStats, StoreError>>),
    OutboxPeek(usize, oneshot::Sender<Result<Vec<OutboxEntry>, StoreError>>),
    OutboxDepth(oneshot::Sender<Result<u64, StoreError>>),
    OutboxDelete(Vec<String>, oneshot::Sender<Result<usize, StoreError>>),
    OutboxCompact(u64, oneshot::Sender<Result<Compaction, StoreError>>),
    KvGet(String, oneshot::Sender<Result<Option<String>, StoreError>>),
    KvSet(String, String, oneshot::Sender<Result<(), StoreError>>),
    CommandIn(
        CommandIn,
        oneshot::Sender<Result<Option<(bool, String)>, StoreError>>,
    ),
    StreamSeq(String, oneshot::Sender<Result<u64, StoreError>>),
    EditMessage(
        i64,
        String,
        Vec<QuickReply>,
        oneshot::Sender<Result<bool, StoreError>>,
    ),
    Escalated(usize, oneshot::Sender<Result<Vec<SessionRow>, StoreError>>),
    Ping(oneshot::Sender<Result<(), StoreError>>),
}

/// Cloneable handle to the store thread.
#[derive(Clone)]
pub struct Store {
    tx: mpsc::Sender<Request>,
}

/// Owns the writer thread; dropping every [`Store`] handle and then calling
/// [`StoreThread::join`] flushes and stops it.
pub struct StoreThread {
    handle: JoinHandle<()>,
}

impl StoreThread {
    pub fn join(self) {
        let _ = self.handle.join();
    }
}

fn open_connection(cfg: &StoreConfig) -> Result<Connection, StoreError> {
    let open_err = |message: String| StoreError::Open {
        path: cfg.path.clone(),
        message,
    };
    if let Some(dir) = cfg.path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| open_err(e.to_string()))?;
    }
    // Owner-only from the start (transcripts, session tokens); SQLite's
    // -wal and -shm files copy this mode.
    edgedesk_support::sqlite::create_private(&cfg.path).map_err(|e| open_err(e.to_string()))?;
    let mut conn = Connection::open(&cfg.path).map_err(|e| open_err(e.to_string()))?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(|e| open_err(e.to_string()))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(open_err(format!(
            "WAL journal mode unavailable (got {mode})"
        )));
    }
    // Design: FULL by default. An acknowledged visitor message then survives
    // a power cut, not only a crash; group commit keeps the fsync cost per batch.
    let sync = match cfg.synchronous {
        Synchronous::Full => "FULL",
        Synchronous::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", sync)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    schema::migrate(&mut conn)?;
    Ok(conn)
}

impl Store {
    /// Open (creating and migrating) the database and start the writer thread.
    pub fn open(cfg: &StoreConfig) -> Result<(Store, StoreThread), StoreError> {
        let conn = open_connection(cfg)?;
        let (tx, rx) = mpsc::channel(cfg.queue_capacity);
        let batch_max = cfg.batch_max;
        let handle = std::thread::Builder::new()
            .name("edgedesk-store".into())
            .spawn(move || writer_loop(conn, rx, batch_max))
            .map_err(|e| StoreError::Open {
                path: cfg.path.clone(),
                message: e.to_string(),
            })?;
        Ok((Store { tx }, StoreThread { handle }))
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Request,
    ) -> Result<T, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Commit a turn; returns the ids of its messages, in order. When this
    /// returns `Ok`, the turn is durable.
    pub async fn commit(&self, write: TurnWrite) -> Result<Vec<i64>, StoreError> {
        self.ask(|r| Request::Commit(write, r)).await
    }

    /// The session whose current conversation is `conversation`.
    pub async fn session_by_conversation(
        &self,
        conversation: &str,
    ) -> Result<Option<SessionRow>, StoreError> {
        let c = conversation.to_owned();
        self.ask(|r| Request::SessionByConversation(c, r)).await
    }

    /// The session with this id.
    pub async fn session(&self, id: &str) -> Result<Option<SessionRow>, StoreError> {
        let id = id.to_owned();
        self.ask(|r| Request::SessionById(id, r)).await
    }

    pub async fn session_by_token_hash(
        &self,
        token_hash: &str,
    ) -> Result<Option<SessionRow>, StoreError> {
        let h = token_hash.to_owned();
        self.ask(|r| Request::Session(h, r)).await
    }

    /// The last `limit` messages of a conversation, oldest first.
    pub async fn history(
        &self,
        conversation_id: &str,
        limit: usize,
    ) -> Result<Vec<HistoryItem>, StoreError> {
        let c = conversation_id.to_owned();
        self.ask(|r| Request::History(c, limit, r)).await
    }

    /// Sessions last seen before `cutoff_ms` (at most `limit`).
    pub async fn idle_sessions(
        &self,
        cutoff_ms: i64,
        limit: usize,
    ) -> Result<Vec<SessionRow>, StoreError> {
        self.ask(|r| Request::IdleSessions(cutoff_ms, limit, r))
            .await
    }

    /// Delete transcripts older than `cutoff_ms`.
    pub async fn enforce_retention(&self, cutoff_ms: i64) -> Result<RetentionStats, StoreError> {
        self.ask(|r| Request::Retention(cutoff_ms, r)).await
    }

    /// The oldest `limit` outbox events, in delivery order.
    pub async fn outbox_peek(&self, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        self.ask(|r| Request::OutboxPeek(limit, r)).await
    }

    pub async fn outbox_depth(&self) -> Result<u64, StoreError> {
        self.ask(Request::OutboxDepth).await
    }

    /// Delete events the controller acknowledged; returns how many were deleted.
    pub async fn outbox_delete(&self, ids: Vec<String>) -> Result<usize, StoreError> {
        self.ask(|r| Request::OutboxDelete(ids, r)).await
    }

    /// Keep the outbox within `budget_bytes` by dropping the oldest routine
    /// conversation summaries; escalations, offline messages and flow results
    /// are never dropped.
    pub async fn outbox_compact(&self, budget_bytes: u64) -> Result<Compaction, StoreError> {
        self.ask(|r| Request::OutboxCompact(budget_bytes, r)).await
    }

    pub async fn kv_get(&self, key: &str) -> Result<Option<String>, StoreError> {
        let k = key.to_owned();
        self.ask(|r| Request::KvGet(k, r)).await
    }

    pub async fn kv_set(&self, key: &str, value: &str) -> Result<(), StoreError> {
        let (k, v) = (key.to_owned(), value.to_owned());
        self.ask(|r| Request::KvSet(k, v, r)).await
    }

    /// The recorded result of command `id`, if it was executed before.
    pub async fn command_result(&self, id: &str) -> Result<Option<(bool, String)>, StoreError> {
        let id = id.to_owned();
        self.ask(|r| Request::CommandResult(id, r)).await
    }

    /// Record a received command once. Returns the earlier result if this id
    /// was already executed (a resend), `None` if it is new and now stored.
    pub async fn command_in(&self, cmd: CommandIn) -> Result<Option<(bool, String)>, StoreError> {
        self.ask(|r| Request::CommandIn(cmd, r)).await
    }

    /// The last executed `seq` of command stream `key` (0 if none yet).
    pub async fn stream_seq(&self, key: &str) -> Result<u64, StoreError> {
        let key = key.to_owned();
        self.ask(|r| Request::StreamSeq(key, r)).await
    }

    /// Change the text of a stored line (the greeting after a language
    /// switch); false if there is no such line.
    pub async fn edit_message(
        &self,
        id: i64,
        text: &str,
        quick_replies: Vec<QuickReply>,
    ) -> Result<bool, StoreError> {
        let t = text.to_owned();
        self.ask(|r| Request::EditMessage(id, t, quick_replies, r))
            .await
    }

    /// Sessions whose conversation waits for a person or is with one (at
    /// most `limit`), for presence and abandonment checks after a restart.
    pub async fn escalated_sessions(&self, limit: usize) -> Result<Vec<SessionRow>, StoreError> {
        self.ask(|r| Request::Escalated(limit, r)).await
    }

    /// Round trip through the writer thread (readiness probe).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.ask(Request::Ping).await
    }
}

fn writer_loop(mut conn: Connection, mut rx: mpsc::Receiver<Request>, batch_max: usize) {
    let mut deferred = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        let mut batch = Vec::new();
        match first {
            Request::Commit(w, r) => batch.push((w, r)),
            other => deferred.push(other),
        }
        if !batch.is_empty() {
            while batch.len() < batch_max {
                match rx.try_recv() {
                    Ok(Request::Commit(w, r)) => batch.push((w, r)),
                    Ok(other) => deferred.push(other),
                    Err(_) => break,
                }
            }
            commit_batch(&mut conn, batch);
        }
        for req in deferred.drain(..) {
            serve(&mut conn, req);
        }
    }
    // Channel closed: every handle dropped. Checkpoint so the WAL is folded in.
    let _ = conn.pragma_update(None, "wal_checkpoint", "TRUNCATE");
    tracing::debug!("store thread stopped");
}

fn commit_batch(conn: &mut Connection, batch: Vec<(TurnWrite, CommitReply)>) {
    let result = (|| -> Result<Vec<Vec<i64>>, StoreError> {
        let tx = conn.transaction()?;
        let mut all = Vec::with_capacity(batch.len());
        for (w, _) in &batch {
            all.push(apply_turn(&tx, w)?);
        }
        tx.commit()?;
        Ok(all)
    })();
    match result {
        Ok(ids) => {
            for ((_, reply), ids) in batch.into_iter().zip(ids) {
                let _ = reply.send(Ok(ids));
            }
        }
        Err(e) => {
            tracing::error!(error = %e, turns = batch.len(), "store commit failed");
            let msg = e.to_string();
            for (_, reply) in batch {
                let _ = reply.send(Err(StoreError::Corrupt(format!("commit failed: {msg}"))));
            }
        }
    }
}

/// Lines of a conversation a summary carries at most (the latest ones).
const SUMMARY_TRANSCRIPT_MAX: usize = 200;

fn apply_turn(tx: &rusqlite::Transaction<'_>, w: &TurnWrite) -> Result<Vec<i64>, StoreError> {
    let s = &w.session;
    if let Some((lang, started_at)) = &w.conversation_start {
        tx.prepare_cached(
            "INSERT INTO conversations (id, session_id, lang, started_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(id) DO NOTHING",
        )?
        .execute(params![s.conversation_id, s.id, lang, started_at])?;
    }
    tx.prepare_cached(
        "INSERT INTO sessions (id, token_hash, created_at, last_seen, conversation_id, state)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT(id) DO UPDATE SET last_seen = excluded.last_seen,
             conversation_id = excluded.conversation_id, state = excluded.state",
    )?
    .execute(params![
        s.id,
        s.token_hash,
        s.created_at,
        s.last_seen,
        s.conversation_id,
        s.state
    ])?;
    let mut ids = Vec::with_capacity(w.messages.len());
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO messages (conversation_id, sender, text, quick_replies, intent, confidence, at, author)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        for m in &w.messages {
            let qr = if m.quick_replies.is_empty() {
                None
            } else {
                Some(
                    serde_json::to_string(&m.quick_replies)
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                )
            };
            insert.execute(params![
                s.conversation_id,
                m.sender.as_str(),
                m.text,
                qr,
                m.intent,
                m.confidence,
                m.at,
                m.author
            ])?;
            ids.push(tx.last_insert_rowid());
        }
    }
    if w.escalated {
        tx.prepare_cached("UPDATE conversations SET escalated = 1 WHERE id = ?1")?
            .execute(params![s.conversation_id])?;
    }
    if let Some((ended_at, reason)) = &w.conversation_end {
        tx.prepare_cached("UPDATE conversations SET ended_at = ?2, end_reason = ?3 WHERE id = ?1 AND ended_at IS NULL")?
            .execute(params![s.conversation_id, ended_at, reason])?;
    }
    for e in &w.events {
        // A chat line names the stored message it forwards: the first of this turn.
        let filled;
        let e = match &e.body {
            EventBody::ChatLine(l) if l.line.id == 0 && !ids.is_empty() => {
                let mut c = e.clone();
                if let EventBody::ChatLine(l) = &mut c.body {
                    l.line.id = ids[0];
                }
                filled = c;
                &filled
            }
            // A summary carries the transcript, read in this same transaction
            // so it includes this turn's lines.
            EventBody::ConversationSummary(s) if s.transcript.is_empty() => {
                let mut c = e.clone();
                if let EventBody::ConversationSummary(s) = &mut c.body {
                    s.transcript = load_history(tx, &s.conversation, SUMMARY_TRANSCRIPT_MAX)?
                        .into_iter()
                        .map(TranscriptLine::from)
                        .collect();
                }
                filled = c;
                &filled
            }
            _ => e,
        };
        let body = serde_json::to_string(e).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        tx.prepare_cached("INSERT INTO outbox (id, kind, at, body) VALUES (?1, ?2, ?3, ?4)")?
            .execute(params![e.id, e.body.kind(), e.at, body])?;
        if let EventBody::OfflineMessage(m) = &e.body {
            tx.prepare_cached(
                "INSERT INTO offline_messages (event_id, conversation_id, lang, name, contact, message, at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![e.id, m.conversation, m.lang.as_str(), m.name, m.contact, m.message, e.at])?;
        }
    }
    Ok(ids)
}

fn serve(conn: &mut Connection, req: Request) {
    match req {
        Request::Commit(w, r) => commit_batch(conn, vec![(w, r)]),
        Request::Session(h, r) => {
            let _ = r.send(load_session(conn, &h));
        }
        Request::CommandResult(id, r) => {
            let found = conn
                .query_row(
                    "SELECT ok, detail FROM commands_in WHERE id = ?1",
                    [id],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional();
            let _ = r.send(found.map_err(Into::into));
        }
        Request::SessionByConversation(c, r) => {
            let found = conn
                .prepare_cached(&format!(
                    "SELECT {SESSION_COLUMNS} FROM sessions WHERE conversation_id = ?1"
                ))
                .and_then(|mut s| s.query_row([c], session_from_row).optional());
            let _ = r.send(found.map_err(Into::into));
        }
        Request::SessionById(id, r) => {
            let found = conn
                .prepare_cached(&format!(
                    "SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ?1"
                ))
                .and_then(|mut s| s.query_row([id], session_from_row).optional());
            let _ = r.send(found.map_err(Into::into));
        }
        Request::History(c, limit, r) => {
            let _ = r.send(load_history(conn, &c, limit));
        }
        Request::IdleSessions(cutoff, limit, r) => {
            let _ = r.send(idle_sessions(conn, cutoff, limit));
        }
        Request::Retention(cutoff, r) => {
            let _ = r.send(retention(conn, cutoff));
        }
        Request::OutboxPeek(limit, r) => {
            let _ = r.send(outbox_peek(conn, limit));
        }
        Request::OutboxDepth(r) => {
            let _ = r.send(
                conn.query_row("SELECT COUNT(*) FROM outbox", [], |row| {
                    row.get::<_, i64>(0)
                })
                .map(|n| n as u64)
                .map_err(Into::into),
            );
        }
        Request::OutboxDelete(ids, r) => {
            let _ = r.send(outbox_delete(conn, &ids));
        }
        Request::OutboxCompact(budget, r) => {
            let _ = r.send(outbox_compact(conn, budget));
        }
        Request::KvGet(k, r) => {
            let _ = r.send(
                conn.query_row("SELECT value FROM kv WHERE key = ?1", [k], |row| row.get(0))
                    .optional()
                    .map_err(Into::into),
            );
        }
        Request::KvSet(k, v, r) => {
            let _ = r.send(kv_set(conn, &k, &v));
        }
        Request::CommandIn(c, r) => {
            let _ = r.send(command_in(conn, &c));
        }
        Request::StreamSeq(key, r) => {
            let seq = conn
                .query_row(
                    "SELECT seq FROM command_streams WHERE key = ?1",
                    [key],
                    |row| row.get::<_, i64>(0),
                )
                .optional()
                .map(|s| s.unwrap_or(0) as u64);
            let _ = r.send(seq.map_err(Into::into));
        }
        Request::EditMessage(id, text, qr, r) => {
            let qr = if qr.is_empty() {
                None
            } else {
                serde_json::to_string(&qr).ok()
            };
            let n = conn.execute(
                "UPDATE messages SET text = ?2, quick_replies = ?3 WHERE id = ?1",
                params![id, text, qr],
            );
            let _ = r.send(n.map(|n| n > 0).map_err(Into::into));
        }
        Request::Escalated(limit, r) => {
            let _ = r.send(escalated_sessions(conn, limit));
        }
        Request::Ping(r) => {
            let _ = r.send(
                conn.query_row("SELECT 1", [], |_| Ok(()))
                    .map_err(Into::into),
            );
        }
    }
}

fn session_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<SessionRow> {
    Ok(SessionRow {
        id: row.get(0)?,
        token_hash: row.get(1)?,
        created_at: row.get(2)?,
        last_seen: row.get(3)?,
        conversation_id: row.get(4)?,
        state: row.get(5)?,
    })
}

const SESSION_COLUMNS: &str = "id, token_hash, created_at, last_seen, conversation_id, state";

fn load_session(conn: &Connection, token_hash: &str) -> Result<Option<SessionRow>, StoreError> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE token_hash = ?1"
        ))?
        .query_row([token_hash], session_from_row)
        .optional()?)
}

fn idle_sessions(
    conn: &Connection,
    cutoff: i64,
    limit: usize,
) -> Result<Vec<SessionRow>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {SESSION_COLUMNS} FROM sessions s WHERE last_seen < ?1
         AND EXISTS (SELECT 1 FROM conversations c WHERE c.id = s.conversation_id AND c.ended_at IS NULL)
         ORDER BY last_seen LIMIT ?2"
    ))?;
    let rows = stmt.query_map(params![cutoff, limit as i64], session_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn escalated_sessions(conn: &Connection, limit: usize) -> Result<Vec<SessionRow>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {SESSION_COLUMNS} FROM sessions
         WHERE json_extract(state, '$.phase.phase') IN ('waiting_for_agent', 'with_agent')
         ORDER BY last_seen LIMIT ?1"
    ))?;
    let rows = stmt.query_map([limit as i64], session_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn load_history(
    conn: &Connection,
    conversation: &str,
    limit: usize,
) -> Result<Vec<HistoryItem>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, sender, text, quick_replies, at, author FROM
           (SELECT * FROM messages WHERE conversation_id = ?1 ORDER BY id DESC LIMIT ?2)
         ORDER BY id",
    )?;
    let rows = stmt.query_map(params![conversation, limit as i64], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, Option<String>>(3)?,
            r.get::<_, i64>(4)?,
            r.get::<_, Option<String>>(5)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, sender, text, qr, at, author) = row?;
        let from = Sender::parse(&sender)
            .ok_or_else(|| StoreError::Corrupt(format!("sender {sender:?}")))?;
        let quick_replies = match qr {
            Some(j) => serde_json::from_str(&j).map_err(|e| StoreError::Corrupt(e.to_string()))?,
            None => Vec::new(),
        };
        out.push(HistoryItem {
            id,
            from,
            author,
            text,
            quick_replies,
            at,
        });
    }
    Ok(out)
}

fn retention(conn: &mut Connection, cutoff: i64) -> Result<RetentionStats, StoreError> {
    let tx = conn.transaction()?;
    let mut stats = RetentionStats::default();
    // Conversations of sessions gone quiet before the cutoff, and ended ones.
    tx.execute_batch(&format!(
        "CREATE TEMP TABLE IF NOT EXISTS doomed (id TEXT PRIMARY KEY);
         DELETE FROM doomed;
         INSERT OR IGNORE INTO doomed SELECT id FROM conversations WHERE ended_at IS NOT NULL AND ended_at < {cutoff};
         INSERT OR IGNORE INTO doomed SELECT c.id FROM conversations c JOIN sessions s ON s.id = c.session_id
             WHERE s.last_seen < {cutoff};"
    ))?;
    stats.messages = tx.execute(
        "DELETE FROM messages WHERE conversation_id IN (SELECT id FROM doomed)",
        [],
    )?;
    stats.conversations = tx.execute(
        "DELETE FROM conversations WHERE id IN (SELECT id FROM doomed)",
        [],
    )?;
    stats.sessions = tx.execute("DELETE FROM sessions WHERE last_seen < ?1", [cutoff])?;
    stats.offline_messages = tx.execute("DELETE FROM offline_messages WHERE at < ?1", [cutoff])?;
    tx.execute("DELETE FROM commands_in WHERE received_at < ?1", [cutoff])?;
    tx.execute("DELETE FROM command_streams WHERE at < ?1", [cutoff])?;
    tx.execute("DELETE FROM doomed", [])?;
    tx.commit()?;
    Ok(stats)
}

fn kv_set(conn: &Connection, k: &str, v: &str) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO kv (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        params![k, v],
    )?;
    Ok(())
}

fn outbox_delete(conn: &mut Connection, ids: &[String]) -> Result<usize, StoreError> {
    let tx = conn.transaction()?;
    let mut n = 0;
    {
        let mut stmt = tx.prepare_cached("DELETE FROM outbox WHERE id = ?1")?;
        for id in ids {
            n += stmt.execute([id])?;
        }
    }
    tx.commit()?;
    Ok(n)
}

/// Key in `kv` counting summaries dropped by compaction.
pub const KV_COMPACTED: &str = "outbox_compacted";

fn outbox_compact(conn: &mut Connection, budget: u64) -> Result<Compaction, StoreError> {
    let tx = conn.transaction()?;
    let mut bytes: i64 = tx.query_row(
        "SELECT COALESCE(SUM(LENGTH(body)), 0) FROM outbox",
        [],
        |r| r.get(0),
    )?;
    let mut dropped = 0u64;
    if bytes as u64 > budget {
        let victims: Vec<(i64, i64)> = {
            let mut stmt = tx.prepare(
                // Learning samples go first, then routine summaries; never
                // escalations, offline messages or agent chat.
                "SELECT seq, LENGTH(body) FROM outbox WHERE kind IN ('sample', 'conversation_summary')
                 ORDER BY kind = 'conversation_summary', seq",
            )?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        for (seq, len) in victims {
            if bytes as u64 <= budget {
                break;
            }
            tx.execute("DELETE FROM outbox WHERE seq = ?1", [seq])?;
            bytes -= len;
            dropped += 1;
        }
    }
    let before: i64 = tx
        .query_row("SELECT value FROM kv WHERE key = ?1", [KV_COMPACTED], |r| {
            r.get::<_, String>(0)
        })
        .optional()?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let total = before as u64 + dropped;
    if dropped > 0 {
        kv_set(&tx, KV_COMPACTED, &total.to_string())?;
    }
    tx.commit()?;
    Ok(Compaction {
        bytes: bytes.max(0) as u64,
        dropped,
        dropped_total: total,
    })
}

fn command_in(conn: &Connection, c: &CommandIn) -> Result<Option<(bool, String)>, StoreError> {
    let earlier: Option<(bool, String)> = conn
        .query_row(
            "SELECT ok, detail FROM commands_in WHERE id = ?1",
            [&c.id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    if earlier.is_some() {
        return Ok(earlier);
    }
    let tx = conn.unchecked_transaction()?;
    tx.execute(
        "INSERT INTO commands_in (id, kind, args, received_at, ok, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![c.id, c.kind, c.args, c.received_at, c.ok, c.detail],
    )?;
    if let Some((key, seq)) = &c.stream {
        tx.execute(
            "INSERT INTO command_streams (key, seq, at) VALUES (?1, ?2, ?3)
             ON CONFLICT(key) DO UPDATE SET seq = MAX(seq, excluded.seq), at = excluded.at",
            params![key, *seq as i64, c.received_at],
        )?;
    }
    tx.commit()?;
    Ok(None)
}

fn outbox_peek(conn: &Connection, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT seq, body FROM outbox ORDER BY seq LIMIT ?1")?;
    let rows = stmt.query_map([limit as i64], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (seq, body) = row?;
        let event = serde_json::from_str(&body).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        out.push(OutboxEntry { seq, event });
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
