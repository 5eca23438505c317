//! The per-node command queue: commands stay until the node acknowledges
//! them; a command of a stream gets the stream's next `seq` when queued.

use super::sql::{Conn, Dialect, OptionalExtension, Row, SqlError, params};
use edgedesk_common::sync::{Command, CommandBody, Stream};
use serde::{Deserialize, Serialize};

use super::{Store, StoreError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandRow {
    pub command: Command,
    pub node_id: String,
    pub sent_at: Option<i64>,
    pub acked_at: Option<i64>,
    pub ok: Option<bool>,
    pub detail: Option<String>,
}

/// Queue `cmd` for `node`. A command with a stream gets the stream's next
/// `seq` here (the one in `cmd` is ignored); returns the command as queued.
/// A command whose id is already queued (a console resending a line it had
/// no answer for) is not queued twice: the stored one is returned.
pub(super) fn enqueue(
    conn: &Conn,
    node: &str,
    cmd: &Command,
    sent_at: Option<i64>,
) -> Result<Command, StoreError> {
    if let Some(existing) = conn
        .prepare_cached(
            "SELECT id, kind, args, created_at, stream, stream_seq FROM commands WHERE id = ?1",
        )?
        .query_row([&cmd.id], command_from_row)
        .optional()?
    {
        return Ok(existing);
    }
    let mut cmd = cmd.clone();
    if let Some(stream) = cmd.stream.as_mut() {
        stream.seq =
            conn.prepare_cached(
                "INSERT INTO command_streams (node_id, key, seq) VALUES (?1, ?2, 1)
                 ON CONFLICT(node_id, key) DO UPDATE SET seq = command_streams.seq + 1 RETURNING seq",
            )?
            .query_row(params![node, stream.key], |r| r.get::<_, i64>(0))? as u64;
    }
    conn.execute(
        "INSERT INTO commands (id, node_id, kind, args, created_at, sent_at, stream, stream_seq)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            cmd.id,
            node,
            cmd.body.kind(),
            cmd.body.args().to_string(),
            cmd.issued_at,
            sent_at,
            cmd.stream.as_ref().map(|s| s.key.as_str()),
            cmd.stream.as_ref().map(|s| s.seq as i64)
        ],
    )?;
    Ok(cmd)
}

fn command_from_row(r: &Row) -> Result<Command, SqlError> {
    let kind: String = r.get("kind")?;
    let args: String = r.get("args")?;
    let key: Option<String> = r.get("stream")?;
    let seq: Option<i64> = r.get("stream_seq")?;
    let args = serde_json::from_str(&args).unwrap_or(serde_json::Value::Null);
    let body = CommandBody::from_parts(&kind, args).map_err(|e| SqlError::conversion(2, e))?;
    Ok(Command {
        id: r.get("id")?,
        body,
        issued_at: r.get("created_at")?,
        stream: key.zip(seq).map(|(key, seq)| Stream {
            key,
            seq: seq as u64,
        }),
        // Trace contexts are not stored: a resent command goes without.
        trace: None,
    })
}

/// Unacknowledged commands of `node`, oldest first.
/// Unacknowledged commands of `node` in queue order; with `sent_before`,
/// only those not sent since then.
fn pending_commands(
    conn: &Conn,
    node: &str,
    sent_before: Option<i64>,
) -> Result<Vec<Command>, StoreError> {
    // In the order they were queued: SQLite's rowid, PostgreSQL's `seq`.
    let order = match conn.dialect() {
        Dialect::Sqlite => "rowid",
        Dialect::Postgres => "seq",
    };
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT id, kind, args, created_at, stream, stream_seq FROM commands
         WHERE node_id = ?1 AND acked_at IS NULL
           AND (CAST(?2 AS BIGINT) IS NULL OR sent_at IS NULL OR sent_at <= ?2) ORDER BY {order}"
    ))?;
    let rows = stmt.query_map(params![node, sent_before], command_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Record a node's acknowledgement; false if no such pending command of that node.
pub(super) fn ack_command(
    conn: &Conn,
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

fn commands(conn: &Conn, node: &str, limit: usize) -> Result<Vec<CommandRow>, StoreError> {
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

impl Store {
    /// Queue a command (giving it its stream position); `sent_at` records
    /// it as sent in the same write when the caller sends it right away.
    pub async fn enqueue_command(
        &self,
        node: &str,
        cmd: Command,
        sent_at: Option<i64>,
    ) -> Result<Command, StoreError> {
        let node = node.to_owned();
        self.db
            .call(move |c| enqueue(c, &node, &cmd, sent_at))
            .await
    }

    pub async fn pending_commands(
        &self,
        node: &str,
        sent_before: Option<i64>,
    ) -> Result<Vec<Command>, StoreError> {
        let node = node.to_owned();
        self.db
            .call(move |c| pending_commands(c, &node, sent_before))
            .await
    }

    pub async fn mark_sent(&self, ids: Vec<String>, now: i64) -> Result<(), StoreError> {
        self.db
            .call(move |c| {
                let tx = c.transaction()?;
                {
                    let mut stmt =
                        tx.prepare_cached("UPDATE commands SET sent_at = ?2 WHERE id = ?1")?;
                    for id in &ids {
                        stmt.execute(params![id, now])?;
                    }
                }
                tx.commit()?;
                Ok(())
            })
            .await
    }

    /// A node's commands, newest first.
    pub async fn commands(&self, node: &str, limit: usize) -> Result<Vec<CommandRow>, StoreError> {
        let node = node.to_owned();
        self.db.call(move |c| commands(c, &node, limit)).await
    }

    /// Outcomes (ok, detail) of the acknowledged ones among `ids`.
    pub async fn command_outcomes(
        &self,
        ids: Vec<String>,
    ) -> Result<Vec<(String, bool, String)>, StoreError> {
        self.db
            .call(move |c| {
                let mut out = Vec::new();
                let mut stmt = c.prepare_cached(
                    "SELECT ok, detail FROM commands WHERE id = ?1 AND acked_at IS NOT NULL",
                )?;
                for id in ids {
                    let row: Option<(Option<bool>, Option<String>)> = stmt
                        .query_row([&id], |r| Ok((r.get(0)?, r.get(1)?)))
                        .optional()?;
                    if let Some((ok, detail)) = row {
                        out.push((id, ok.unwrap_or(false), detail.unwrap_or_default()));
                    }
                }
                Ok(out)
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_queue_until_acknowledged_and_streams_numbered() {
        let c = super::super::test_conn();
        let cmd = Command {
            trace: None,
            id: "k1".into(),
            body: CommandBody::Ping,
            issued_at: 1,
            stream: None,
        };
        enqueue(&c, "a", &cmd, Some(100)).unwrap();
        assert_eq!(pending_commands(&c, "a", None).unwrap(), vec![cmd.clone()]);
        // The retry timer leaves alone what was sent since its cut-off.
        assert!(pending_commands(&c, "a", Some(99)).unwrap().is_empty());
        assert_eq!(
            pending_commands(&c, "a", Some(100)).unwrap(),
            vec![cmd.clone()]
        );
        assert!(
            !ack_command(&c, "b", "k1", true, "", 2).unwrap(),
            "another node cannot ack it"
        );
        assert!(ack_command(&c, "a", "k1", true, "pong", 2).unwrap());
        assert!(pending_commands(&c, "a", None).unwrap().is_empty());
        assert!(
            !ack_command(&c, "a", "k1", true, "", 3).unwrap(),
            "acknowledged once"
        );
        let streamed = |id: &str| Command {
            trace: None,
            id: id.into(),
            body: CommandBody::AgentLeft(edgedesk_common::sync::AgentLeft {
                conversation: "conv".into(),
            }),
            issued_at: 4,
            stream: Some(Stream {
                key: "conv".into(),
                seq: 0,
            }),
        };
        let one = enqueue(&c, "a", &streamed("s1"), None).unwrap();
        let two = enqueue(&c, "a", &streamed("s2"), None).unwrap();
        assert_eq!((one.stream.unwrap().seq, two.stream.unwrap().seq), (1, 2));
        let rows = commands(&c, "a", 10).unwrap();
        assert_eq!(rows.len(), 3);
        assert!(rows.iter().any(|r| r.command.body.kind() == "agent_left"));
    }
}
