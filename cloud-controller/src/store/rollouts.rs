//! Rollouts as stored: the whole engine state as JSON, written after every
//! step, with the id of the last command sent to each node.

use std::collections::BTreeMap;

use super::sql::{Conn, OptionalExtension, Row, SqlError, params};

use super::{Store, StoreError};
use crate::rollout::Rollout;

#[derive(Debug, Clone)]
pub struct RolloutRow {
    pub id: String,
    pub model_id: String,
    pub version: String,
    pub selector: BTreeMap<String, String>,
    pub state: Rollout,
    /// node → id of the last command sent to it.
    pub commands: BTreeMap<String, String>,
    pub created_at: i64,
    pub updated_at: i64,
}

const COLUMNS: &str = "id, model_id, version, selector, state, commands, created_at, updated_at";

fn row(r: &Row) -> Result<RolloutRow, SqlError> {
    let json = |i: usize, s: String| SqlError::conversion(i, s);
    let selector: String = r.get(3)?;
    let state: String = r.get(4)?;
    let commands: String = r.get(5)?;
    Ok(RolloutRow {
        id: r.get(0)?,
        model_id: r.get(1)?,
        version: r.get(2)?,
        selector: serde_json::from_str(&selector).map_err(|e| json(3, e.to_string()))?,
        state: serde_json::from_str(&state).map_err(|e| json(4, e.to_string()))?,
        commands: serde_json::from_str(&commands).map_err(|e| json(5, e.to_string()))?,
        created_at: r.get(6)?,
        updated_at: r.get(7)?,
    })
}

fn save(conn: &Conn, r: &RolloutRow) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO rollouts (id, model_id, version, selector, phase, state, commands, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT(id) DO UPDATE SET phase = excluded.phase, state = excluded.state,
             commands = excluded.commands, updated_at = excluded.updated_at",
        params![
            r.id,
            r.model_id,
            r.version,
            serde_json::to_string(&r.selector).expect("serialises"),
            r.state.phase.name(),
            serde_json::to_string(&r.state).expect("serialises"),
            serde_json::to_string(&r.commands).expect("serialises"),
            r.created_at,
            r.updated_at
        ],
    )?;
    Ok(())
}

fn query(conn: &Conn, filter: &str) -> Result<Vec<RolloutRow>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM rollouts {filter} ORDER BY created_at DESC"
    ))?;
    let rows = stmt.query_map([], row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

impl Store {
    pub async fn rollout(&self, id: &str) -> Result<Option<RolloutRow>, StoreError> {
        let id = id.to_owned();
        self.db
            .call(move |c| {
                Ok(c.query_row(
                    &format!("SELECT {COLUMNS} FROM rollouts WHERE id = ?1"),
                    [id],
                    row,
                )
                .optional()?)
            })
            .await
    }

    /// Every rollout, newest first.
    pub async fn rollouts(&self) -> Result<Vec<RolloutRow>, StoreError> {
        self.db.call(|c| query(c, "")).await
    }

    /// Rollouts not finished yet, newest first.
    pub async fn rollouts_running(&self) -> Result<Vec<RolloutRow>, StoreError> {
        self.db
            .call(|c| query(c, "WHERE phase NOT IN ('succeeded', 'aborted')"))
            .await
    }

    pub async fn rollout_save(&self, r: RolloutRow) -> Result<(), StoreError> {
        self.db.call(move |c| save(c, &r)).await
    }
}
