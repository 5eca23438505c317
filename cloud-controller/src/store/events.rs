//! What nodes send up, stored once by event id, and what it means for
//! chats, tickets and history — all in the transaction of its batch, so an
//! acknowledged event is never half applied.

use super::sql::{Conn, OptionalExtension, params};
use edgedesk_common::event::{Event, EventBody};
use edgedesk_common::sync::Heartbeat;
use serde::{Deserialize, Serialize};

use super::{Store, StoreError};

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

/// One opened inbound message, as the store needs it.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub node: String,
    /// The envelope's sequence number (the node's replay mark).
    pub seq: u64,
    pub what: InboundKind,
}

#[derive(Debug, Clone)]
pub enum InboundKind {
    Heartbeat(Box<Heartbeat>),
    Events(Vec<Event>),
    CommandAck {
        id: String,
        ok: bool,
        detail: String,
    },
    /// Anything else: only the node's last-seen time and replay mark.
    Seen,
}

/// What the store made of one inbound message.
#[derive(Debug, Clone, PartialEq)]
pub enum InboundOutcome {
    None,
    /// Events: those stored for the first time (the rest were resends).
    Events {
        /// New events that were applied (not refused).
        fresh: Vec<Event>,
        total: usize,
        /// New events, applied or refused.
        new: usize,
        /// New events refused: they named another node's conversation.
        refused: usize,
    },
    /// A command acknowledgement; `false` if no such pending command of that node.
    CommandAcked(bool),
    /// Refused by the shared replay window: another replica took this
    /// sequence number of the node already (a replay), or it is older than
    /// the window. Nothing of the message was applied.
    Replayed,
}

/// How many of a node's latest sequence numbers the shared replay window
/// keeps (as [`edgedesk_common::envelope::ReplayWindow::WINDOW`]).
const SHARED_WINDOW: i64 = edgedesk_common::envelope::ReplayWindow::WINDOW as i64;

/// Take `seq` of `node` in the shared replay window (call inside the
/// batch's transaction, before the node's mark moves): `false` if it was
/// taken already or is below the window.
fn take_seq(tx: &Conn, node: &str, seq: u64) -> Result<bool, StoreError> {
    let taken = tx
        .prepare_cached(
            "INSERT INTO inbound_seqs (node_id, seq)
             SELECT ?1, ?2 WHERE ?2 > COALESCE((SELECT seq_high FROM nodes WHERE id = ?1), 0) - ?3
             ON CONFLICT DO NOTHING",
        )?
        .execute(params![node, seq as i64, SHARED_WINDOW])?;
    Ok(taken > 0)
}

/// Store events idempotently (call inside the caller's transaction); returns
/// the indices of those that were new.
fn ingest(tx: &Conn, node: &str, events: &[Event], now: i64) -> Result<Vec<usize>, StoreError> {
    let mut new = Vec::new();
    {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO events (id, node_id, kind, at, received_at, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING",
        )?;
        for (i, e) in events.iter().enumerate() {
            // A transcript is kept once, by the history store (chats): the
            // event log keeps what happened, not the lines again.
            let stripped;
            let e = match &e.body {
                EventBody::ConversationSummary(_)
                | EventBody::Escalation(_)
                | EventBody::ChatLine(_)
                | EventBody::Sample(_) => {
                    let mut c = e.clone();
                    match &mut c.body {
                        EventBody::ConversationSummary(s) => s.transcript.clear(),
                        EventBody::Escalation(x) => x.transcript.clear(),
                        EventBody::ChatLine(x) => x.line.text.clear(),
                        // Kept once, in `samples`.
                        EventBody::Sample(x) => x.text.clear(),
                        _ => {}
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

/// The conversation an event is about, if any.
fn conversation_of(body: &EventBody) -> Option<&str> {
    Some(match body {
        EventBody::ConversationSummary(s) => &s.conversation,
        EventBody::Escalation(x) => &x.conversation,
        EventBody::OfflineMessage(m) => &m.conversation,
        EventBody::ChatLine(l) => &l.conversation,
        EventBody::Rating(r) => &r.conversation,
        EventBody::EscalationWithdrawn(w) => &w.conversation,
        EventBody::VisitorPresence(p) => &p.conversation,
        EventBody::Sample(s) => &s.conversation,
        EventBody::FlowCompleted(_) => return None,
    })
}

/// Whether `node` may speak for `conversation`: one the controller has never
/// seen, or one that node started. A node naming another branch's
/// conversation (to add lines, rate, reopen or close it) is refused.
fn owned_by(conn: &Conn, conversation: &str, node: &str) -> Result<bool, StoreError> {
    let owner: Option<String> = conn
        .prepare_cached("SELECT node_id FROM chats WHERE id = ?1")?
        .query_row([conversation], |r| r.get(0))
        .optional()?;
    Ok(owner.is_none_or(|o| o == node))
}

/// Record what newly stored `events` from `node` mean for chats, tickets and
/// history, in the caller's transaction (the one that stores the events, so
/// an acknowledged event is never half applied). Returns the events that
/// were applied: those naming another node's conversation are stored (and
/// acknowledged, so the node does not resend them) but change nothing.
fn project(conn: &Conn, node: &str, events: Vec<Event>) -> Result<(Vec<Event>, usize), StoreError> {
    let mut applied = Vec::with_capacity(events.len());
    let mut refused = 0;
    for e in events {
        if let Some(conversation) = conversation_of(&e.body) {
            if !owned_by(conn, conversation, node)? {
                tracing::warn!(
                    %node,
                    conversation = %conversation.escape_debug(),
                    kind = e.body.kind(),
                    "event names another node's conversation; ignored"
                );
                refused += 1;
                continue;
            }
        }
        match &e.body {
            EventBody::Escalation(x) => {
                super::chats::escalated(
                    conn,
                    &x.conversation,
                    node,
                    x.lang.as_str(),
                    &x.intents,
                    e.at,
                )?;
                for (i, l) in x.transcript.iter().enumerate() {
                    let key = if l.id > 0 {
                        l.id.to_string()
                    } else {
                        format!("esc-{}-{i}", e.at)
                    };
                    super::chats::add_line(
                        conn,
                        &x.conversation,
                        &key,
                        l.from.as_str(),
                        None,
                        &l.text,
                        l.at,
                    )?;
                }
            }
            EventBody::ChatLine(l) => {
                let key = l.line.id.to_string();
                super::chats::add_line(
                    conn,
                    &l.conversation,
                    &key,
                    "visitor",
                    None,
                    &l.line.text,
                    l.line.at,
                )?;
            }
            EventBody::OfflineMessage(m) => {
                super::tickets::open(
                    conn,
                    &e.id,
                    node,
                    &m.conversation,
                    m.lang.as_str(),
                    &m.name,
                    &m.contact,
                    &m.message,
                    e.at,
                )?;
            }
            EventBody::Rating(r) => super::chats::rate(conn, &r.conversation, r.score)?,
            EventBody::EscalationWithdrawn(w) => {
                super::chats::withdrawn(conn, &w.conversation, &withdrawal(&w.reason), e.at)?;
            }
            EventBody::VisitorPresence(p) => {
                super::chats::presence(conn, &p.conversation, p.present)?;
            }
            EventBody::ConversationSummary(s) => {
                if s.escalated {
                    // Ended while still waiting: out of the queue.
                    super::chats::withdrawn(conn, &s.conversation, "visitor ended the chat", e.at)?;
                }
                if !s.transcript.is_empty() {
                    super::chats::summarized(conn, node, s)?;
                }
            }
            EventBody::Sample(s) => super::samples::add(conn, &e.id, node, s, e.at)?,
            EventBody::FlowCompleted(_) => {}
        }
        applied.push(e);
    }
    Ok((applied, refused))
}

/// A withdrawal's reason as the chat's resolution, in words.
pub fn withdrawal(reason: &str) -> String {
    match reason {
        "visitor_left" => "visitor left before an agent was free".into(),
        "declined" => "visitor stopped waiting".into(),
        "offline_message" => "visitor left a message instead (see tickets)".into(),
        other => format!("withdrawn: {other}"),
    }
}

fn prune_seqs(c: &Conn) -> Result<usize, StoreError> {
    Ok(c.prepare_cached(
        "DELETE FROM inbound_seqs WHERE seq <= COALESCE((SELECT seq_high FROM nodes WHERE nodes.id = inbound_seqs.node_id), 0) - ?1",
    )?
    .execute(params![SHARED_WINDOW])?)
}

fn events(conn: &Conn, q: &EventQuery) -> Result<Vec<StoredEvent>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, node_id, kind, at, received_at, body FROM events
         WHERE (CAST(?1 AS TEXT) IS NULL OR node_id = ?1) AND (CAST(?2 AS TEXT) IS NULL OR kind = ?2)
           AND (CAST(?3 AS BIGINT) IS NULL OR at >= ?3) AND (CAST(?4 AS BIGINT) IS NULL OR at < ?4)
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

fn event_count(conn: &Conn) -> Result<u64, StoreError> {
    Ok(conn.query_row("SELECT COUNT(*) FROM events", [], |r| r.get::<_, i64>(0))? as u64)
}

impl Store {
    /// Apply a batch of inbound messages in one transaction (group commit):
    /// replay marks, heartbeats, events (idempotent) with their projection
    /// into chats, tickets and history, command acknowledgements. With
    /// `shared_window` (replicas sharing node traffic), each message first
    /// takes its sequence number in the database's replay window, and one
    /// another replica took is [`InboundOutcome::Replayed`].
    pub async fn apply_inbound(
        &self,
        batch: Vec<Inbound>,
        now: i64,
        shared_window: bool,
    ) -> Result<(Vec<Inbound>, Vec<InboundOutcome>), StoreError> {
        self.db
            .call(move |c| {
                let tx = c.transaction()?;
                let mut outcomes = Vec::with_capacity(batch.len());
                for m in &batch {
                    if shared_window && !take_seq(&tx, &m.node, m.seq)? {
                        outcomes.push(InboundOutcome::Replayed);
                        continue;
                    }
                    super::nodes::touch(&tx, &m.node, m.seq, now)?;
                    outcomes.push(match &m.what {
                        InboundKind::Heartbeat(hb) => {
                            super::nodes::record_heartbeat(&tx, &m.node, hb, now)?;
                            InboundOutcome::None
                        }
                        InboundKind::Events(events) => {
                            let new = ingest(&tx, &m.node, events, now)?;
                            let fresh: Vec<Event> =
                                new.iter().map(|&i| events[i].clone()).collect();
                            let new = fresh.len();
                            let (fresh, refused) = project(&tx, &m.node, fresh)?;
                            InboundOutcome::Events {
                                total: events.len(),
                                new,
                                refused,
                                fresh,
                            }
                        }
                        InboundKind::CommandAck { id, ok, detail } => InboundOutcome::CommandAcked(
                            super::commands::ack_command(&tx, &m.node, id, *ok, detail, now)?,
                        ),
                        InboundKind::Seen => InboundOutcome::None,
                    });
                }
                tx.commit()?;
                Ok((batch, outcomes))
            })
            .await
    }

    /// Stored events matching `q`, oldest first.
    pub async fn events(&self, q: EventQuery) -> Result<Vec<StoredEvent>, StoreError> {
        self.db.call(move |c| events(c, &q)).await
    }

    pub async fn event_count(&self) -> Result<u64, StoreError> {
        self.db.call(|c| event_count(c)).await
    }

    /// Forget shared-window entries that fell below their node's window;
    /// returns how many went.
    pub async fn prune_inbound_seqs(&self) -> Result<usize, StoreError> {
        self.db.call(|c| prune_seqs(c)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgedesk_common::chat::Lang;
    use edgedesk_common::event::Escalation;

    /// Replicas sharing a node's traffic share its replay window: a number
    /// taken once is refused the second time, whichever replica asks, and
    /// so is one below the window under the node's mark.
    #[test]
    fn the_shared_replay_window_takes_each_number_once() {
        let c = super::super::test_conn();
        c.execute(
            "INSERT INTO nodes (id, sign_key, seal_key, mqtt_pass_hash, enrolled_at, seq_high) VALUES ('n', '', '', '', 1, 1000)",
            [],
        )
        .unwrap();
        assert!(take_seq(&c, "n", 1001).unwrap(), "a new number");
        assert!(!take_seq(&c, "n", 1001).unwrap(), "the same number again");
        assert!(take_seq(&c, "n", 990).unwrap(), "late, inside the window");
        assert!(!take_seq(&c, "n", 872).unwrap(), "below the window");
        assert!(
            take_seq(&c, "other", 5).unwrap(),
            "another node's numbers are its own"
        );
        super::super::nodes::touch(&c, "n", 2000, 1).unwrap();
        let pruned = prune_seqs(&c).unwrap();
        assert_eq!(pruned, 2, "both numbers of n fell below its window");
    }

    #[test]
    fn ingest_is_idempotent() {
        let c = super::super::test_conn();
        let ev = |i: usize| Event {
            trace: None,
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
        let batch: Vec<Event> = (0..10).map(ev).collect();
        assert_eq!(ingest(&c, "a", &batch, 5).unwrap().len(), 10);
        assert_eq!(ingest(&c, "a", &batch[5..], 6).unwrap().len(), 0);
        assert_eq!(event_count(&c).unwrap(), 10);
        let q = EventQuery {
            node: Some("a".into()),
            since: Some(3),
            until: Some(7),
            ..Default::default()
        };
        assert_eq!(
            events(&c, &q)
                .unwrap()
                .iter()
                .map(|e| e.at)
                .collect::<Vec<_>>(),
            vec![3, 4, 5, 6]
        );
        let q = EventQuery {
            kind: Some("offline_message".into()),
            ..Default::default()
        };
        assert!(events(&c, &q).unwrap().is_empty());
    }
}
