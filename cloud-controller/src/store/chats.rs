//! Conversations as the controller keeps them: escalated chats (who has them,
//! their lines, resolution and rating) and the transcripts of conversations
//! the bot handled alone (from nodes' summaries), with full-text search
//! (SQLite FTS5, trigram tokenizer, so Chinese works as well as English).

use super::sql::{Conn, Dialect, OptionalExtension, Row, SqlError, params};
use serde::{Deserialize, Serialize};

use edgedesk_common::event::ConversationSummary;

use super::{Store, StoreError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Line {
    pub sender: String,
    pub text: String,
    pub at: i64,
    /// The agent's display name on an agent's line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatView {
    pub id: String,
    pub node_id: String,
    pub lang: String,
    pub state: String,
    pub agent_id: Option<String>,
    pub intents: Vec<String>,
    /// False for a conversation the bot handled alone.
    pub escalated: bool,
    pub created_at: i64,
    pub closed_at: Option<i64>,
    pub resolution: Option<String>,
    pub rating: Option<u8>,
    /// Whether the visitor's page is open (as the node last reported).
    pub visitor_present: bool,
    /// Since when a waiting chat waits (its escalation).
    pub queued_at: Option<i64>,
    /// The holding (or last) agent's display name.
    pub agent_name: Option<String>,
    pub lines: Vec<Line>,
    /// The newest line (lists only, where `lines` is empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_line: Option<Line>,
}

/// A chat the desk must hold again after a restart.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveChat {
    pub id: String,
    pub node_id: String,
    pub lang: String,
    pub queued_at: i64,
    pub visitor_present: bool,
    /// The holder of an assigned chat.
    pub agent: Option<super::AgentRow>,
}

/// Record an escalation; returns true if the chat is new (or was closed and
/// is waiting again).
pub(super) fn escalated(
    conn: &Conn,
    chat: &str,
    node: &str,
    lang: &str,
    intents: &[String],
    at: i64,
) -> Result<bool, StoreError> {
    let state: Option<String> = conn
        .query_row("SELECT state FROM chats WHERE id = ?1", [chat], |r| {
            r.get(0)
        })
        .optional()?;
    match state.as_deref() {
        Some("waiting") | Some("assigned") => Ok(false),
        Some(_) => {
            conn.execute(
                "UPDATE chats SET state = 'waiting', agent_id = NULL, closed_at = NULL, queued_at = ?2,
                   visitor_present = 1 WHERE id = ?1",
                params![chat, at],
            )?;
            Ok(true)
        }
        None => {
            conn.execute(
                "INSERT INTO chats (id, node_id, lang, state, intents, created_at, queued_at) VALUES (?1, ?2, ?3, 'waiting', ?4, ?5, ?5)",
                params![chat, node, lang, serde_json::to_string(intents).unwrap_or_else(|_| "[]".into()), at],
            )?;
            Ok(true)
        }
    }
}

/// Record the transcript of a conversation that ended (a node's summary).
/// A conversation the controller already holds (it was escalated) keeps its
/// own lines, which came live; otherwise it is stored as closed and not
/// escalated. Returns true if it was stored.
pub(super) fn summarized(
    conn: &Conn,
    node: &str,
    s: &ConversationSummary,
) -> Result<bool, StoreError> {
    let chat = s.conversation.as_str();
    let n = conn.execute(
        "INSERT INTO chats (id, node_id, lang, state, intents, created_at, closed_at, resolution, escalated)
         VALUES (?1, ?2, ?3, 'closed', ?4, ?5, ?6, ?7, 0) ON CONFLICT DO NOTHING",
        params![
            chat,
            node,
            s.lang.as_str(),
            serde_json::to_string(&s.intents).unwrap_or_else(|_| "[]".into()),
            s.started_at,
            s.ended_at,
            s.reason
        ],
    )?;
    if n == 0 {
        return Ok(false);
    }
    for l in &s.transcript {
        add_line(
            conn,
            chat,
            &l.id.to_string(),
            l.from.as_str(),
            None,
            &l.text,
            l.at,
        )?;
    }
    Ok(true)
}

/// Add a line once (by `key`); returns true if it was new.
pub(super) fn add_line(
    conn: &Conn,
    chat: &str,
    key: &str,
    sender: &str,
    agent: Option<&str>,
    text: &str,
    at: i64,
) -> Result<bool, StoreError> {
    let n = conn.execute(
        "INSERT INTO chat_lines (chat_id, key, sender, agent_id, text, at) VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING",
        params![chat, key, sender, agent, text, at],
    )?;
    if n > 0 && sender == "agent" {
        conn.execute(
            "UPDATE chats SET first_response_at = COALESCE(first_response_at, ?2) WHERE id = ?1",
            params![chat, at],
        )?;
    }
    Ok(n > 0)
}

/// The visitor no longer waits (left, declined, left a message, ended):
/// a waiting chat closes with `resolution`; true if one did. An assigned
/// chat is the desk's to close (its agent is told).
pub(super) fn withdrawn(
    conn: &Conn,
    chat: &str,
    resolution: &str,
    at: i64,
) -> Result<bool, StoreError> {
    let n = conn.execute(
        "UPDATE chats SET state = 'closed', closed_at = ?2, resolution = ?3 WHERE id = ?1 AND state = 'waiting'",
        params![chat, at, resolution],
    )?;
    Ok(n > 0)
}

/// Whether the visitor's page is open.
pub(super) fn presence(conn: &Conn, chat: &str, present: bool) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE chats SET visitor_present = ?2 WHERE id = ?1",
        params![chat, present],
    )?;
    Ok(())
}

/// Design: the first assignment stays the chat's `assigned_at` (a transfer
/// or a requeue does not move it), so first-response time is measured from
/// when a person first had the chat and is never negative.
fn assign(conn: &Conn, chat: &str, agent: &str, at: i64) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE chats SET state = 'assigned', agent_id = ?2, assigned_at = COALESCE(assigned_at, ?3) WHERE id = ?1",
        params![chat, agent, at],
    )?;
    Ok(())
}

fn requeue(conn: &Conn, chat: &str) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE chats SET state = 'waiting', agent_id = NULL WHERE id = ?1 AND state != 'closed'",
        [chat],
    )?;
    Ok(())
}

fn close(conn: &Conn, chat: &str, resolution: &str, at: i64) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE chats SET state = 'closed', closed_at = ?2, resolution = ?3 WHERE id = ?1",
        params![chat, at, resolution],
    )?;
    Ok(())
}

pub(super) fn rate(conn: &Conn, chat: &str, score: u8) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE chats SET rating = ?2 WHERE id = ?1",
        params![chat, score],
    )?;
    Ok(())
}

/// A chat with its lines.
fn get(conn: &Conn, chat: &str) -> Result<Option<ChatView>, StoreError> {
    let Some(mut view) = head(conn, chat)? else {
        return Ok(None);
    };
    let mut stmt = conn.prepare_cached(
        "SELECT l.sender, l.text, l.at, a.display_name FROM chat_lines l
         LEFT JOIN agents a ON a.id = l.agent_id WHERE l.chat_id = ?1 ORDER BY l.at, l.id",
    )?;
    let lines = stmt.query_map([chat], line_from_row)?;
    view.lines = lines.collect::<Result<_, _>>()?;
    Ok(Some(view))
}

/// A chat without its lines.
fn head(conn: &Conn, chat: &str) -> Result<Option<ChatView>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT c.id, c.node_id, c.lang, c.state, c.agent_id, c.intents, c.created_at, c.closed_at,
                    c.resolution, c.rating, c.escalated, c.visitor_present, c.queued_at, a.display_name
             FROM chats c LEFT JOIN agents a ON a.id = c.agent_id WHERE c.id = ?1",
            [chat],
            |r| {
                let intents: String = r.get(5)?;
                Ok(ChatView {
                    id: r.get(0)?,
                    node_id: r.get(1)?,
                    lang: r.get(2)?,
                    state: r.get(3)?,
                    agent_id: r.get(4)?,
                    intents: serde_json::from_str(&intents).unwrap_or_default(),
                    escalated: r.get(10)?,
                    created_at: r.get(6)?,
                    closed_at: r.get(7)?,
                    resolution: r.get(8)?,
                    rating: r.get(9)?,
                    visitor_present: r.get(11)?,
                    queued_at: r.get(12)?,
                    agent_name: r.get(13)?,
                    lines: Vec::new(),
                    last_line: None,
                })
            },
        )
        .optional()?)
}

fn line_from_row(r: &Row) -> Result<Line, SqlError> {
    Ok(Line {
        sender: r.get(0)?,
        text: r.get(1)?,
        at: r.get(2)?,
        author: r.get(3)?,
    })
}

/// The newest line of `chat`.
fn last_line(conn: &Conn, chat: &str) -> Result<Option<Line>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT l.sender, l.text, l.at, a.display_name FROM chat_lines l
             LEFT JOIN agents a ON a.id = l.agent_id WHERE l.chat_id = ?1 ORDER BY l.at DESC, l.id DESC LIMIT 1",
        )?
        .query_row([chat], line_from_row)
        .optional()?)
}

/// Waiting and assigned chats, with the holders of assigned ones, oldest first.
fn live(conn: &Conn) -> Result<Vec<LiveChat>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, node_id, lang, COALESCE(queued_at, created_at), visitor_present, agent_id, state
         FROM chats WHERE state IN ('waiting', 'assigned') ORDER BY COALESCE(queued_at, created_at), id",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            LiveChat {
                id: r.get(0)?,
                node_id: r.get(1)?,
                lang: r.get(2)?,
                queued_at: r.get(3)?,
                visitor_present: r.get(4)?,
                agent: None,
            },
            r.get::<_, Option<String>>(5)?,
            r.get::<_, String>(6)?,
        ))
    })?;
    let rows: Vec<_> = rows.collect::<Result<_, _>>()?;
    let mut out = Vec::with_capacity(rows.len());
    for (mut chat, agent, state) in rows {
        if state == "assigned" {
            chat.agent = match agent {
                Some(id) => super::agents::get(conn, &id)?.filter(|a| !a.disabled),
                None => None,
            };
        }
        out.push(chat);
    }
    Ok(out)
}

/// Filters of the history view.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ChatFilter {
    /// Full-text query (3+ characters; trigram search, any language).
    pub q: Option<String>,
    pub node: Option<String>,
    pub agent: Option<String>,
    pub state: Option<String>,
    /// Only chats in which this intent was recognised.
    pub intent: Option<String>,
    /// Unix ms, inclusive / exclusive, on the chat's creation time.
    pub since: Option<i64>,
    pub until: Option<i64>,
    /// Only chats that reached a person (`true`) or only those the bot
    /// handled alone (`false`).
    pub escalated: Option<bool>,
    pub limit: Option<usize>,
}

/// Chats matching `f`, newest first, without their lines.
fn list(conn: &Conn, f: &ChatFilter) -> Result<Vec<ChatView>, StoreError> {
    let ids: Option<std::collections::HashSet<String>> =
        match f.q.as_deref().map(str::trim).filter(|q| !q.is_empty()) {
            Some(q) => Some(search(conn, q, 10_000)?.into_iter().collect()),
            None => None,
        };
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT id FROM chats WHERE (CAST(?1 AS TEXT) IS NULL OR node_id = ?1) AND (CAST(?2 AS TEXT) IS NULL OR agent_id = ?2)
           AND (CAST(?3 AS TEXT) IS NULL OR state = ?3) AND (CAST(?4 AS BIGINT) IS NULL OR created_at >= ?4) AND (CAST(?5 AS BIGINT) IS NULL OR created_at < ?5)
           AND (CAST(?6 AS TEXT) IS NULL OR EXISTS (SELECT 1 FROM {} WHERE j.value = ?6))
           AND (CAST(?7 AS BIGINT) IS NULL OR escalated = ?7)
         ORDER BY created_at DESC",
        conn.dialect().json_items("chats.intents", "j")
    ))?;
    let rows = stmt.query_map(
        params![
            f.node,
            f.agent,
            f.state,
            f.since,
            f.until,
            f.intent,
            f.escalated
        ],
        |r| r.get::<_, String>(0),
    )?;
    let limit = f.limit.unwrap_or(100).min(1000);
    let mut out = Vec::new();
    for id in rows {
        let id = id?;
        if ids.as_ref().is_some_and(|ids| !ids.contains(&id)) {
            continue;
        }
        if let Some(mut v) = head(conn, &id)? {
            v.last_line = last_line(conn, &id)?;
            out.push(v);
        }
        if out.len() >= limit {
            break;
        }
    }
    Ok(out)
}

/// Per-day service figures for the dashboard charts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DayStats {
    /// Unix ms of the day's start (UTC).
    pub day: i64,
    pub chats: u64,
    /// Mean seconds from assignment to the agent's first line.
    pub first_response_s: Option<f64>,
    /// Mean rating (1–5) of rated chats.
    pub csat: Option<f64>,
}

fn daily_stats(conn: &Conn, since: i64) -> Result<Vec<DayStats>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT (created_at / 86400000) * 86400000 AS day, COUNT(*),
                CAST(AVG(CASE WHEN first_response_at >= assigned_at
                         THEN (first_response_at - assigned_at) / 1000.0 END) AS DOUBLE PRECISION),
                CAST(AVG(rating) AS DOUBLE PRECISION)
         FROM chats WHERE created_at >= ?1 AND escalated = 1 GROUP BY day ORDER BY day",
    )?;
    let rows = stmt.query_map([since], |r| {
        Ok(DayStats {
            day: r.get(0)?,
            chats: r.get::<_, i64>(1)? as u64,
            first_response_s: r.get(2)?,
            csat: r.get(3)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Chat ids whose lines contain `query`, newest first.
///
/// Three characters and more go through the trigram index. Shorter queries
/// — most Chinese words are two characters (人工, 转账) — cannot use it, so
/// they scan the lines with a substring test (no LIKE wildcards to escape);
/// the scan reads at most `SHORT_SCAN` of the newest lines.
///
/// The index is SQLite's FTS5 `trigram` table, or PostgreSQL's `pg_trgm`
/// GIN index, which serves `LIKE '%…%'`.
fn search(conn: &Conn, query: &str, limit: usize) -> Result<Vec<String>, StoreError> {
    const SHORT_SCAN: i64 = 200_000;
    if query.chars().count() < 3 {
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT chat_id FROM (SELECT chat_id, text, at FROM chat_lines ORDER BY id DESC LIMIT ?3) AS recent
             WHERE {} GROUP BY chat_id ORDER BY MAX(at) DESC LIMIT ?2",
            conn.dialect().contains("text", "?1")
        ))?;
        let rows = stmt.query_map(params![query, limit as i64, SHORT_SCAN], |r| r.get(0))?;
        return Ok(rows.collect::<Result<_, _>>()?);
    }
    if conn.dialect() == Dialect::Postgres {
        let pattern = format!(
            "%{}%",
            query
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        );
        let mut stmt = conn.prepare_cached(
            "SELECT chat_id FROM chat_lines WHERE text LIKE ?1
             GROUP BY chat_id ORDER BY MAX(at) DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![pattern, limit as i64], |r| r.get(0))?;
        return Ok(rows.collect::<Result<_, _>>()?);
    }
    // Quote the query as one FTS5 string so user text is never FTS syntax.
    let quoted = format!("\"{}\"", query.replace('"', "\"\""));
    let mut stmt = conn.prepare_cached(
        "SELECT DISTINCT l.chat_id FROM chat_lines_fts f JOIN chat_lines l ON l.id = f.rowid
         WHERE chat_lines_fts MATCH ?1 ORDER BY l.at DESC LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![quoted, limit as i64], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// A change the live-chat desk makes to a chat.
#[derive(Debug, Clone, PartialEq)]
pub enum ChatWrite {
    Assign {
        chat: String,
        agent: String,
        at: i64,
    },
    Requeue {
        chat: String,
    },
    Close {
        chat: String,
        resolution: String,
        at: i64,
    },
    AgentLine {
        chat: String,
        agent: String,
        text: String,
        at: i64,
        /// Dedupe key: the console's id for the line, so a line sent again
        /// after a reconnect is stored once.
        key: String,
    },
}

impl Store {
    /// The desk's changes and the commands they send, in one transaction
    /// (group commit: one fsync for a whole batch of the desk's work). Each
    /// command is queued for its node with its stream's next `seq`, marked
    /// sent at `sent_at` when given; returns them as queued.
    pub async fn chat_writes(
        &self,
        writes: Vec<ChatWrite>,
        commands: Vec<(String, edgedesk_common::sync::Command, Option<i64>)>,
    ) -> Result<Vec<edgedesk_common::sync::Command>, StoreError> {
        self.db
            .call(move |c| {
                let tx = c.transaction()?;
                for w in &writes {
                    match w {
                        ChatWrite::Assign { chat, agent, at } => assign(&tx, chat, agent, *at)?,
                        ChatWrite::Requeue { chat } => requeue(&tx, chat)?,
                        ChatWrite::Close {
                            chat,
                            resolution,
                            at,
                        } => close(&tx, chat, resolution, *at)?,
                        ChatWrite::AgentLine {
                            chat,
                            agent,
                            text,
                            at,
                            key,
                        } => {
                            add_line(&tx, chat, key, "agent", Some(agent), text, *at)?;
                        }
                    }
                }
                let mut queued = Vec::with_capacity(commands.len());
                for (node, cmd, sent_at) in &commands {
                    queued.push(super::commands::enqueue(&tx, node, cmd, *sent_at)?);
                }
                tx.commit()?;
                Ok(queued)
            })
            .await
    }

    /// Record that `agent` holds the chat (from `at`).
    pub async fn chat_assign(&self, chat: &str, agent: &str, at: i64) -> Result<(), StoreError> {
        let (chat, agent) = (chat.to_owned(), agent.to_owned());
        self.db.call(move |c| assign(c, &chat, &agent, at)).await
    }

    /// The chat is waiting again (unless closed).
    pub async fn chat_requeue(&self, chat: &str) -> Result<(), StoreError> {
        let chat = chat.to_owned();
        self.db.call(move |c| requeue(c, &chat)).await
    }

    pub async fn chat_close(
        &self,
        chat: &str,
        resolution: &str,
        at: i64,
    ) -> Result<(), StoreError> {
        let (chat, resolution) = (chat.to_owned(), resolution.to_owned());
        self.db
            .call(move |c| close(c, &chat, &resolution, at))
            .await
    }

    /// Add a line once (by `key`); true if it was new.
    pub async fn chat_add_line(
        &self,
        chat: &str,
        key: &str,
        sender: &str,
        agent: Option<&str>,
        text: &str,
        at: i64,
    ) -> Result<bool, StoreError> {
        let (chat, key, sender, agent, text) = (
            chat.to_owned(),
            key.to_owned(),
            sender.to_owned(),
            agent.map(str::to_owned),
            text.to_owned(),
        );
        self.db
            .call(move |c| add_line(c, &chat, &key, &sender, agent.as_deref(), &text, at))
            .await
    }

    /// A chat with its lines.
    pub async fn chat(&self, chat: &str) -> Result<Option<ChatView>, StoreError> {
        let chat = chat.to_owned();
        self.db.call(move |c| get(c, &chat)).await
    }

    /// Waiting and assigned chats, to rebuild the desk at start.
    pub async fn live_chats(&self) -> Result<Vec<LiveChat>, StoreError> {
        self.db.call(|c| live(c)).await
    }

    /// Chats matching `f`, newest first, without their lines.
    pub async fn chats(&self, f: ChatFilter) -> Result<Vec<ChatView>, StoreError> {
        self.db.call(move |c| list(c, &f)).await
    }

    /// Per-day figures since `since` (ms) for the dashboard.
    pub async fn daily_stats(&self, since: i64) -> Result<Vec<DayStats>, StoreError> {
        self.db.call(move |c| daily_stats(c, since)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgedesk_common::event::TranscriptLine;

    #[test]
    fn lifecycle_and_search_in_english_and_chinese() {
        let c = super::super::test_conn();
        assert!(escalated(&c, "c1", "n1", "zh", &["human_agent".into()], 1).unwrap());
        assert!(
            !escalated(&c, "c1", "n1", "zh", &[], 2).unwrap(),
            "already waiting"
        );
        assert!(add_line(&c, "c1", "7", "visitor", None, "我的银行卡被吞了", 3).unwrap());
        assert!(
            !add_line(&c, "c1", "7", "visitor", None, "我的银行卡被吞了", 3).unwrap(),
            "stored once"
        );
        assign(&c, "c1", "agent-1", 4).unwrap();
        add_line(
            &c,
            "c1",
            "a1",
            "agent",
            Some("agent-1"),
            "We will return your card today",
            5,
        )
        .unwrap();
        close(&c, "c1", "card returned", 6).unwrap();
        rate(&c, "c1", 5).unwrap();
        let v = get(&c, "c1").unwrap().unwrap();
        assert_eq!(
            (v.state.as_str(), v.rating, v.lines.len()),
            ("closed", Some(5), 2)
        );
        assert_eq!(search(&c, "银行卡", 10).unwrap(), vec!["c1".to_string()]);
        assert_eq!(
            search(&c, "return your", 10).unwrap(),
            vec!["c1".to_string()]
        );
        assert!(
            search(&c, "\" OR x", 10).unwrap().is_empty(),
            "query text is not FTS syntax"
        );
        assert!(
            escalated(&c, "c1", "n1", "zh", &[], 9).unwrap(),
            "a closed chat can come back"
        );
    }

    #[test]
    fn one_and_two_character_chinese_words_are_found() {
        let c = super::super::test_conn();
        let lines = [
            ("c-agent", "我要人工服务"),
            ("c-service", "请帮我联系客服"),
            ("c-book", "我想预约明天上午"),
            ("c-lost", "我的卡丢了要挂失"),
            ("c-transfer", "转账没有到账"),
        ];
        for (i, (chat, text)) in lines.iter().enumerate() {
            escalated(&c, chat, "n1", "zh", &[], i as i64).unwrap();
            add_line(&c, chat, "1", "visitor", None, text, i as i64).unwrap();
        }
        for (word, chat) in [
            ("人工", "c-agent"),
            ("客服", "c-service"),
            ("预约", "c-book"),
            ("挂失", "c-lost"),
            ("转账", "c-transfer"),
        ] {
            let found = list(
                &c,
                &ChatFilter {
                    q: Some(word.into()),
                    ..Default::default()
                },
            )
            .unwrap();
            let ids: Vec<&str> = found.iter().map(|v| v.id.as_str()).collect();
            assert_eq!(ids, vec![chat], "search for {word}");
            assert_eq!(
                found[0].last_line.as_ref().map(|l| l.text.as_str()),
                lines.iter().find(|l| l.0 == chat).map(|l| l.1),
                "the list previews the last line"
            );
        }
        assert_eq!(search(&c, "卡", 10).unwrap(), vec!["c-lost".to_string()]);
        assert!(search(&c, "%", 10).unwrap().is_empty(), "no wildcards");
    }

    #[test]
    fn first_response_time_counts_from_the_first_assignment_and_is_never_negative() {
        let c = super::super::test_conn();
        escalated(&c, "c1", "n1", "en", &[], 0).unwrap();
        assign(&c, "c1", "a1", 1_000).unwrap();
        add_line(&c, "c1", "x", "agent", Some("a1"), "hello", 4_000).unwrap();
        // Transferred later: the first assignment still counts.
        requeue(&c, "c1").unwrap();
        assign(&c, "c1", "a2", 9_000).unwrap();
        let days = daily_stats(&c, 0).unwrap();
        assert_eq!(days[0].first_response_s, Some(3.0));
    }

    #[test]
    fn withdrawal_closes_only_waiting_chats_and_live_chats_list_what_to_restore() {
        let c = super::super::test_conn();
        c.execute(
            "INSERT INTO agents (id, username, display_name, role, password_hash, languages, capacity, created_at)
             VALUES ('a1', 'ann', 'Ann', 'agent', 'x', '[\"en\"]', 2, 0)",
            [],
        )
        .unwrap();
        for (chat, at) in [("gone", 1), ("held", 2), ("wait", 3)] {
            escalated(&c, chat, "n1", "en", &[], at).unwrap();
        }
        assign(&c, "held", "a1", 5).unwrap();
        assert!(withdrawn(&c, "gone", "visitor left", 6).unwrap());
        assert!(
            !withdrawn(&c, "held", "visitor left", 6).unwrap(),
            "the desk closes it"
        );
        presence(&c, "wait", false).unwrap();
        let live = live(&c).unwrap();
        let got: Vec<(&str, Option<&str>, bool)> = live
            .iter()
            .map(|l| {
                (
                    l.id.as_str(),
                    l.agent.as_ref().map(|a| a.display_name.as_str()),
                    l.visitor_present,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![("held", Some("Ann"), true), ("wait", None, false)]
        );
        let v = get(&c, "gone").unwrap().unwrap();
        assert_eq!(
            (v.state.as_str(), v.resolution.as_deref()),
            ("closed", Some("visitor left"))
        );
    }

    #[test]
    fn bot_only_transcripts_are_searchable_and_filtered_by_escalation() {
        use edgedesk_common::chat::Sender;
        let c = super::super::test_conn();
        escalated(&c, "esc", "n1", "en", &["human_agent".into()], 1).unwrap();
        add_line(&c, "esc", "1", "visitor", None, "my card was swallowed", 1).unwrap();
        let line = |id, from, text: &str| TranscriptLine {
            id,
            from,
            text: text.into(),
            at: 10 + id,
        };
        let lines = [
            line(1, Sender::Visitor, "when will my card arrive"),
            line(2, Sender::Bot, "Cards arrive within 5 working days."),
        ];
        let summary = |chat: &str, intents: Vec<String>| ConversationSummary {
            conversation: chat.into(),
            lang: edgedesk_common::chat::Lang::En,
            started_at: 10,
            ended_at: 20,
            visitor_turns: 1,
            intents,
            escalated: false,
            reason: "goodbye".into(),
            transcript: lines.to_vec(),
        };
        let bot = summary("bot", vec!["card_arrival".to_string()]);
        assert!(summarized(&c, "n2", &bot).unwrap());
        assert!(
            !summarized(&c, "n2", &bot).unwrap(),
            "a resent summary is stored once"
        );
        assert!(
            !summarized(&c, "n1", &summary("esc", vec![])).unwrap(),
            "an escalated chat keeps its live lines"
        );
        assert_eq!(get(&c, "esc").unwrap().unwrap().lines.len(), 1);
        let v = get(&c, "bot").unwrap().unwrap();
        assert_eq!(
            (v.escalated, v.state.as_str(), v.lines.len()),
            (false, "closed", 2)
        );
        let ids = |f: ChatFilter| -> Vec<String> {
            list(&c, &f).unwrap().into_iter().map(|v| v.id).collect()
        };
        assert_eq!(
            ids(ChatFilter {
                q: Some("card".into()),
                ..Default::default()
            }),
            vec!["bot", "esc"]
        );
        assert_eq!(
            ids(ChatFilter {
                q: Some("card".into()),
                escalated: Some(false),
                ..Default::default()
            }),
            vec!["bot"]
        );
        assert_eq!(
            ids(ChatFilter {
                q: Some("card".into()),
                escalated: Some(true),
                ..Default::default()
            }),
            vec!["esc"]
        );
        assert_eq!(
            ids(ChatFilter {
                intent: Some("card_arrival".into()),
                ..Default::default()
            }),
            vec!["bot"]
        );
        assert_eq!(
            daily_stats(&c, 0).unwrap()[0].chats,
            1,
            "the dashboard counts escalated chats"
        );
    }
}
