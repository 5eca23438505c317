//! Enrolment tokens, the node registry and each node's history.

use std::collections::BTreeMap;

use super::sql::{Conn, OptionalExtension, Row, SqlError, params};
use edgedesk_common::envelope::PublicKeys;
use edgedesk_common::sync::Heartbeat;
use serde::{Deserialize, Serialize};

use super::{Store, StoreError, sha256_hex};

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
    pub heartbeat: Option<Heartbeat>,
    pub seq_high: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryRow {
    pub at: i64,
    pub kind: String,
    pub detail: String,
}

/// A node's change of online state, as recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub node: String,
    pub online: bool,
    pub reason: &'static str,
}

pub fn create_token(
    conn: &Conn,
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

/// Whether `token` would enrol `node_id` now (nothing changes).
fn may_enroll(
    conn: &Conn,
    token: &str,
    node_id: &str,
    now: i64,
) -> Result<Result<(), EnrollError>, StoreError> {
    let row: Option<(Option<String>, i64, Option<i64>)> = conn
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
    let exists: bool = conn.query_row(
        "SELECT EXISTS(SELECT 1 FROM nodes WHERE id = ?1)",
        [node_id],
        |r| r.get(0),
    )?;
    if exists {
        return Ok(Err(EnrollError::AlreadyEnrolled(node_id.into())));
    }
    Ok(Ok(()))
}

/// Consume `token` and register the node, atomically.
pub fn enroll(
    conn: &mut Conn,
    token: &str,
    node_id: &str,
    keys: &PublicKeys,
    mqtt_pass_hash: &str,
    now: i64,
) -> Result<Result<(), EnrollError>, StoreError> {
    let tx = conn.transaction()?;
    if let Err(e) = may_enroll(&tx, token, node_id, now)? {
        return Ok(Err(e));
    }
    // Conditional, so a token is used once whatever the isolation level.
    let took = tx.execute(
        "UPDATE tokens SET used_at = ?2, used_by = ?3 WHERE hash = ?1 AND used_at IS NULL",
        params![sha256_hex(token), now, node_id],
    )?;
    if took == 0 {
        return Ok(Err(EnrollError::TokenUsed));
    }
    tx.execute(
        "INSERT INTO nodes (id, sign_key, seal_key, mqtt_pass_hash, enrolled_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![node_id, keys.sign, keys.seal, mqtt_pass_hash, now],
    )?;
    add_history(&tx, node_id, now, "enrolled", "")?;
    tx.commit()?;
    Ok(Ok(()))
}

pub(super) fn add_history(
    conn: &Conn,
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
fn trim_history(conn: &Conn, node: &str, keep: usize) -> Result<(), StoreError> {
    conn.execute(
        "DELETE FROM node_history WHERE node_id = ?1 AND id NOT IN
           (SELECT id FROM node_history WHERE node_id = ?1 ORDER BY id DESC LIMIT ?2)",
        params![node, keep as i64],
    )?;
    Ok(())
}

const NODE_COLUMNS: &str = "id, sign_key, seal_key, labels, enrolled_at, revoked_at, online, last_seen, heartbeat, seq_high";

fn node_from_row(r: &Row) -> Result<NodeRow, SqlError> {
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

pub fn nodes(conn: &Conn) -> Result<Vec<NodeRow>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!("SELECT {NODE_COLUMNS} FROM nodes ORDER BY id"))?;
    let rows = stmt.query_map([], node_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn node(conn: &Conn, id: &str) -> Result<Option<NodeRow>, StoreError> {
    Ok(conn
        .prepare_cached(&format!("SELECT {NODE_COLUMNS} FROM nodes WHERE id = ?1"))?
        .query_row([id], node_from_row)
        .optional()?)
}

/// (node id, sha256 of its broker password) of every enrolled, unrevoked node.
pub fn broker_credentials(conn: &Conn) -> Result<Vec<(String, String)>, StoreError> {
    let mut stmt = conn.prepare("SELECT id, mqtt_pass_hash FROM nodes WHERE revoked_at IS NULL")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn revoked_nodes(conn: &Conn) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn.prepare("SELECT id FROM nodes WHERE revoked_at IS NOT NULL")?;
    let rows = stmt.query_map([], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn set_labels(
    conn: &Conn,
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

pub fn revoke(conn: &Conn, id: &str, now: i64) -> Result<bool, StoreError> {
    let n = conn.execute(
        "UPDATE nodes SET revoked_at = ?2, online = 0 WHERE id = ?1 AND revoked_at IS NULL",
        params![id, now],
    )?;
    if n > 0 {
        add_history(conn, id, now, "revoked", "")?;
    }
    Ok(n > 0)
}

fn set_online(
    conn: &Conn,
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

pub(super) fn record_heartbeat(
    conn: &Conn,
    id: &str,
    hb: &Heartbeat,
    now: i64,
) -> Result<(), StoreError> {
    let json = serde_json::to_string(hb).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    conn.prepare_cached("UPDATE nodes SET heartbeat = ?2, last_seen = ?3 WHERE id = ?1")?
        .execute(params![id, json, now])?;
    Ok(())
}

pub(super) fn touch(conn: &Conn, id: &str, seq_high: u64, now: i64) -> Result<(), StoreError> {
    conn.prepare_cached(
        "UPDATE nodes SET last_seen = ?3, seq_high = CASE WHEN seq_high > ?2 THEN seq_high ELSE ?2 END WHERE id = ?1",
    )?
    .execute(params![id, seq_high as i64, now])?;
    Ok(())
}

pub fn history(conn: &Conn, id: &str, limit: usize) -> Result<Vec<HistoryRow>, StoreError> {
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

impl Store {
    /// Issue a one-time enrolment token (only its hash is stored).
    pub async fn create_token(
        &self,
        token: String,
        node: Option<String>,
        now: i64,
        ttl_ms: i64,
    ) -> Result<(), StoreError> {
        self.db
            .call(move |c| create_token(c, &token, node.as_deref(), now, ttl_ms))
            .await
    }

    /// Whether `token` would enrol `node` now, without consuming it (a
    /// check before work outside the store that `enroll` then confirms).
    pub async fn may_enroll(
        &self,
        token: String,
        node: String,
        now: i64,
    ) -> Result<Result<(), EnrollError>, StoreError> {
        self.db
            .call(move |c| may_enroll(c, &token, &node, now))
            .await
    }

    /// Consume `token` and register the node, atomically.
    pub async fn enroll(
        &self,
        token: String,
        node: String,
        keys: PublicKeys,
        mqtt_pass_hash: String,
        now: i64,
    ) -> Result<Result<(), EnrollError>, StoreError> {
        self.db
            .call(move |c| enroll(c, &token, &node, &keys, &mqtt_pass_hash, now))
            .await
    }

    pub async fn nodes(&self) -> Result<Vec<NodeRow>, StoreError> {
        self.db.call(|c| nodes(c)).await
    }

    pub async fn node(&self, id: &str) -> Result<Option<NodeRow>, StoreError> {
        let id = id.to_owned();
        self.db.call(move |c| node(c, &id)).await
    }

    /// The nodes among `ids` the registry has (one query for many: the
    /// dispatcher's first messages from thousands of nodes at once).
    pub async fn nodes_among(&self, ids: Vec<String>) -> Result<Vec<NodeRow>, StoreError> {
        self.db
            .call(move |c| {
                let mut out = Vec::with_capacity(ids.len());
                for chunk in ids.chunks(256) {
                    let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("?{i}")).collect();
                    let mut stmt = c.prepare_cached(&format!(
                        "SELECT {NODE_COLUMNS} FROM nodes WHERE id IN ({})",
                        marks.join(", ")
                    ))?;
                    let params: Vec<super::sql::Value> = chunk
                        .iter()
                        .map(|id| super::sql::Value::Text(id.clone()))
                        .collect();
                    for row in stmt.query_map(params, node_from_row)? {
                        out.push(row?);
                    }
                }
                Ok(out)
            })
            .await
    }

    /// Ids of the nodes the registry shows online.
    pub async fn online_nodes(&self) -> Result<Vec<String>, StoreError> {
        self.db
            .call(|c| {
                let mut stmt = c.prepare_cached(
                    "SELECT id FROM nodes WHERE online = 1 AND revoked_at IS NULL ORDER BY id",
                )?;
                let rows = stmt.query_map([], |r| r.get(0))?;
                Ok(rows.collect::<Result<_, _>>()?)
            })
            .await
    }

    /// (node id, sha256 of its broker password) of every enrolled, unrevoked node.
    pub async fn broker_credentials(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.db.call(|c| broker_credentials(c)).await
    }

    /// The ids of revoked nodes.
    pub async fn revoked_nodes(&self) -> Result<Vec<String>, StoreError> {
        self.db.call(|c| revoked_nodes(c)).await
    }

    /// Replace a node's labels; false if there is no such node.
    pub async fn set_labels(
        &self,
        id: &str,
        labels: BTreeMap<String, String>,
        now: i64,
    ) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.db
            .call(move |c| set_labels(c, &id, &labels, now))
            .await
    }

    /// The sealing key a node announced (its public half: nothing secret).
    pub async fn set_seal_key(&self, id: &str, seal: &str) -> Result<(), StoreError> {
        let (id, seal) = (id.to_owned(), seal.to_owned());
        self.db
            .call(move |c| {
                c.prepare_cached("UPDATE nodes SET seal_key = ?2 WHERE id = ?1")?
                    .execute(params![id, seal])?;
                Ok(())
            })
            .await
    }

    /// Revoke a node; false if it was unknown or revoked already.
    pub async fn revoke(&self, id: &str, now: i64) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.db.call(move |c| revoke(c, &id, now)).await
    }

    /// A node's history, newest first.
    pub async fn history(&self, id: &str, limit: usize) -> Result<Vec<HistoryRow>, StoreError> {
        let id = id.to_owned();
        self.db.call(move |c| history(c, &id, limit)).await
    }

    /// Record online/offline changes, keeping `keep` history rows per node.
    pub async fn record_transitions(
        &self,
        transitions: Vec<Transition>,
        now: i64,
        keep: usize,
    ) -> Result<(), StoreError> {
        self.db
            .call(move |c| {
                let tx = c.transaction()?;
                for t in &transitions {
                    set_online(&tx, &t.node, t.online, now, t.reason)?;
                    trim_history(&tx, &t.node, keep)?;
                }
                tx.commit()?;
                Ok(())
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> PublicKeys {
        PublicKeys {
            sign: "s".into(),
            seal: "x".into(),
        }
    }

    /// Enrolments racing for one token (on PostgreSQL over several
    /// connections): exactly one node gets in.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_token_enrols_one_node_whatever_the_race() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::test_store(&dir.path().join("n.db"));
        store.create_token("t".into(), None, 0, 1000).await.unwrap();
        let tries = (0..8).map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .enroll("t".into(), format!("racer-{i}"), keys(), "h".into(), 1)
                    .await
                    .unwrap()
            })
        });
        let mut won = 0;
        for t in tries {
            match t.await.unwrap() {
                Ok(()) => won += 1,
                Err(e) => assert_eq!(e, EnrollError::TokenUsed),
            }
        }
        assert_eq!(won, 1);
        assert_eq!(store.nodes().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn many_nodes_are_read_in_one_call_in_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::test_store(&dir.path().join("n.db"));
        for i in 0..300 {
            let token = format!("t{i}");
            store
                .create_token(token.clone(), None, 0, 1000)
                .await
                .unwrap();
            store
                .enroll(token, format!("n{i:03}"), keys(), "h".into(), 1)
                .await
                .unwrap()
                .unwrap();
        }
        // 300 known ids (two chunks), unknown ones ignored, quotes harmless.
        let mut ids: Vec<String> = (0..300).map(|i| format!("n{i:03}")).collect();
        ids.push("nobody".into());
        ids.push("x' OR '1'='1".into());
        let mut got: Vec<String> = store
            .nodes_among(ids)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        got.sort();
        assert_eq!(got.len(), 300);
        assert_eq!((got[0].as_str(), got[299].as_str()), ("n000", "n299"));
        assert!(store.nodes_among(vec![]).await.unwrap().is_empty());
    }

    #[test]
    fn tokens_are_one_time_and_node_ids_unique() {
        let mut c = super::super::test_conn();
        let c = &mut c;
        create_token(c, "t1", None, 0, 1000).unwrap();
        create_token(c, "t2", Some("b"), 0, 1000).unwrap();
        create_token(c, "t3", None, 0, 10).unwrap();
        create_token(c, "t4", None, 0, 1000).unwrap();
        assert_eq!(
            enroll(c, "nope", "a", &keys(), "h", 1).unwrap(),
            Err(EnrollError::UnknownToken)
        );
        assert_eq!(enroll(c, "t1", "a", &keys(), "h", 1).unwrap(), Ok(()));
        assert_eq!(
            enroll(c, "t1", "z", &keys(), "h", 1).unwrap(),
            Err(EnrollError::TokenUsed)
        );
        assert_eq!(
            enroll(c, "t2", "c", &keys(), "h", 1).unwrap(),
            Err(EnrollError::TokenForOtherNode("b".into()))
        );
        assert_eq!(
            enroll(c, "t3", "d", &keys(), "h", 50).unwrap(),
            Err(EnrollError::TokenExpired)
        );
        assert_eq!(
            enroll(c, "t4", "a", &keys(), "h", 1).unwrap(),
            Err(EnrollError::AlreadyEnrolled("a".into()))
        );
        assert_eq!(nodes(c).unwrap().len(), 1);
        assert_eq!(history(c, "a", 10).unwrap()[0].kind, "enrolled");
    }
}
