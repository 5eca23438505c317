//! Offline messages as tickets: left by visitors when
//! nobody could come, claimed and resolved by agents in the console; and the
//! canned responses agents insert by shortcut, managed by supervisors.

use super::sql::{Conn, OptionalExtension, Row, SqlError, params};
use serde::{Deserialize, Serialize};

use super::{Store, StoreError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ticket {
    pub id: String,
    pub node_id: String,
    pub conversation: String,
    pub lang: String,
    pub name: String,
    pub contact: String,
    pub message: String,
    pub created_at: i64,
    pub state: String,
    pub agent_id: Option<String>,
    pub resolution: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    #[error("no such ticket")]
    NotFound,
    #[error("the ticket is already claimed by someone else")]
    Taken,
    #[error("only the agent who claimed the ticket (or a supervisor) may resolve it")]
    NotYours,
    #[error("the ticket is already resolved")]
    Resolved,
}

/// Store an offline message as an open ticket (once per event id).
#[allow(clippy::too_many_arguments)]
pub(super) fn open(
    conn: &Conn,
    id: &str,
    node: &str,
    conversation: &str,
    lang: &str,
    name: &str,
    contact: &str,
    message: &str,
    at: i64,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO tickets (id, node_id, conversation, lang, name, contact, message, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT DO NOTHING",
        params![id, node, conversation, lang, name, contact, message, at],
    )?;
    Ok(())
}

const COLUMNS: &str = "id, node_id, conversation, lang, name, contact, message, created_at, state, agent_id, resolution";

fn row(r: &Row) -> Result<Ticket, SqlError> {
    Ok(Ticket {
        id: r.get(0)?,
        node_id: r.get(1)?,
        conversation: r.get(2)?,
        lang: r.get(3)?,
        name: r.get(4)?,
        contact: r.get(5)?,
        message: r.get(6)?,
        created_at: r.get(7)?,
        state: r.get(8)?,
        agent_id: r.get(9)?,
        resolution: r.get(10)?,
    })
}

/// Open tickets and those `agent` holds (or every ticket when `all`), oldest first.
fn list(conn: &Conn, agent: &str, all: bool) -> Result<Vec<Ticket>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM tickets WHERE ?2 OR state = 'open' OR agent_id = ?1 ORDER BY created_at"
    ))?;
    let rows = stmt.query_map(params![agent, all], row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn get(conn: &Conn, id: &str) -> Result<Option<Ticket>, StoreError> {
    Ok(conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM tickets WHERE id = ?1"),
            [id],
            row,
        )
        .optional()?)
}

fn claim(conn: &Conn, id: &str, agent: &str) -> Result<Result<Ticket, TicketError>, StoreError> {
    let Some(t) = get(conn, id)? else {
        return Ok(Err(TicketError::NotFound));
    };
    match t.state.as_str() {
        "resolved" => return Ok(Err(TicketError::Resolved)),
        "claimed" if t.agent_id.as_deref() != Some(agent) => return Ok(Err(TicketError::Taken)),
        _ => {}
    }
    conn.execute(
        "UPDATE tickets SET state = 'claimed', agent_id = ?2 WHERE id = ?1",
        params![id, agent],
    )?;
    Ok(Ok(get(conn, id)?.expect("exists")))
}

fn resolve(
    conn: &Conn,
    id: &str,
    agent: &str,
    supervisor: bool,
    note: &str,
    at: i64,
) -> Result<Result<Ticket, TicketError>, StoreError> {
    let Some(t) = get(conn, id)? else {
        return Ok(Err(TicketError::NotFound));
    };
    if t.state == "resolved" {
        return Ok(Err(TicketError::Resolved));
    }
    if !supervisor && t.agent_id.as_deref() != Some(agent) {
        return Ok(Err(TicketError::NotYours));
    }
    conn.execute(
        "UPDATE tickets SET state = 'resolved', resolution = ?2, resolved_at = ?3, agent_id = COALESCE(agent_id, ?4) WHERE id = ?1",
        params![id, note, at, agent],
    )?;
    Ok(Ok(get(conn, id)?.expect("exists")))
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Canned {
    #[serde(default)]
    pub id: i64,
    pub lang: String,
    /// Typed as `/shortcut` in the reply box.
    pub shortcut: String,
    pub text: String,
}

fn canned_list(conn: &Conn) -> Result<Vec<Canned>, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT id, lang, shortcut, text FROM canned ORDER BY lang, shortcut")?;
    let rows = stmt.query_map([], |r| {
        Ok(Canned {
            id: r.get(0)?,
            lang: r.get(1)?,
            shortcut: r.get(2)?,
            text: r.get(3)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Add or replace the response for (lang, shortcut).
fn canned_put(conn: &Conn, c: &Canned) -> Result<Canned, StoreError> {
    conn.execute(
        "INSERT INTO canned (lang, shortcut, text) VALUES (?1, ?2, ?3)
         ON CONFLICT(lang, shortcut) DO UPDATE SET text = excluded.text",
        params![c.lang, c.shortcut, c.text],
    )?;
    let id = conn.query_row(
        "SELECT id FROM canned WHERE lang = ?1 AND shortcut = ?2",
        params![c.lang, c.shortcut],
        |r| r.get(0),
    )?;
    Ok(Canned { id, ..c.clone() })
}

fn canned_delete(conn: &Conn, id: i64) -> Result<bool, StoreError> {
    Ok(conn.execute("DELETE FROM canned WHERE id = ?1", [id])? > 0)
}

impl Store {
    /// Open tickets and those of `agent` (every ticket if `all`), oldest first.
    pub async fn tickets(&self, agent: &str, all: bool) -> Result<Vec<Ticket>, StoreError> {
        let agent = agent.to_owned();
        self.db.call(move |c| list(c, &agent, all)).await
    }

    pub async fn ticket(&self, id: &str) -> Result<Option<Ticket>, StoreError> {
        let id = id.to_owned();
        self.db.call(move |c| get(c, &id)).await
    }

    pub async fn ticket_claim(
        &self,
        id: &str,
        agent: &str,
    ) -> Result<Result<Ticket, TicketError>, StoreError> {
        let (id, agent) = (id.to_owned(), agent.to_owned());
        self.db.call(move |c| claim(c, &id, &agent)).await
    }

    pub async fn ticket_resolve(
        &self,
        id: &str,
        agent: &str,
        supervisor: bool,
        note: &str,
        at: i64,
    ) -> Result<Result<Ticket, TicketError>, StoreError> {
        let (id, agent, note) = (id.to_owned(), agent.to_owned(), note.to_owned());
        self.db
            .call(move |c| resolve(c, &id, &agent, supervisor, &note, at))
            .await
    }

    pub async fn canned_list(&self) -> Result<Vec<Canned>, StoreError> {
        self.db.call(|c| canned_list(c)).await
    }

    pub async fn canned_put(&self, canned: Canned) -> Result<Canned, StoreError> {
        self.db.call(move |c| canned_put(c, &canned)).await
    }

    pub async fn canned_delete(&self, id: i64) -> Result<bool, StoreError> {
        self.db.call(move |c| canned_delete(c, id)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticket_lifecycle() {
        let c = super::super::test_conn();
        open(&c, "t1", "n", "c", "en", "Ada", "+44", "call me", 1).unwrap();
        open(&c, "t1", "n", "c", "en", "Ada", "+44", "call me", 1).unwrap();
        assert_eq!(list(&c, "a", false).unwrap().len(), 1, "stored once");
        assert_eq!(claim(&c, "t1", "a").unwrap().unwrap().state, "claimed");
        assert_eq!(claim(&c, "t1", "b").unwrap(), Err(TicketError::Taken));
        assert!(
            list(&c, "b", false).unwrap().is_empty(),
            "b does not see a's claimed ticket"
        );
        assert_eq!(
            resolve(&c, "t1", "b", false, "x", 2).unwrap(),
            Err(TicketError::NotYours)
        );
        assert_eq!(
            resolve(&c, "t1", "a", false, "called back", 2)
                .unwrap()
                .unwrap()
                .state,
            "resolved"
        );
        assert_eq!(claim(&c, "t1", "a").unwrap(), Err(TicketError::Resolved));
        assert_eq!(claim(&c, "nope", "a").unwrap(), Err(TicketError::NotFound));
    }

    #[test]
    fn canned_responses_by_language_and_shortcut() {
        let c = super::super::test_conn();
        let hi = canned_put(
            &c,
            &Canned {
                id: 0,
                lang: "en".into(),
                shortcut: "hi".into(),
                text: "Hello!".into(),
            },
        )
        .unwrap();
        canned_put(
            &c,
            &Canned {
                id: 0,
                lang: "zh".into(),
                shortcut: "hi".into(),
                text: "您好！".into(),
            },
        )
        .unwrap();
        canned_put(
            &c,
            &Canned {
                id: 0,
                lang: "en".into(),
                shortcut: "hi".into(),
                text: "Hello there!".into(),
            },
        )
        .unwrap();
        let all = canned_list(&c).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].text, "Hello there!");
        assert!(canned_delete(&c, hi.id).unwrap());
        assert_eq!(canned_list(&c).unwrap().len(), 1);
    }
}
