//! Each branch's hours and facts as operators last set them, stored in the
//! same transaction as the `set_branch` command that carries them to the
//! node (so the desired state and its delivery cannot disagree).

use super::sql::{OptionalExtension, params};
use edgedesk_common::branch::BranchInfo;
use edgedesk_common::sync::Command;

use super::{Store, StoreError, commands};

/// A branch's stored settings and the delivery of the latest change.
#[derive(Debug, Clone, PartialEq)]
pub struct BranchRow {
    pub node_id: String,
    pub info: BranchInfo,
    pub updated_at: i64,
    pub updated_by: String,
    pub command_id: String,
    /// When the node acknowledged the command, and how.
    pub acked_at: Option<i64>,
    pub ok: Option<bool>,
    pub detail: Option<String>,
}

impl BranchRow {
    /// "pending" until the node acknowledges, then "applied" or "refused".
    pub fn delivery(&self) -> &'static str {
        match (self.acked_at, self.ok) {
            (None, _) => "pending",
            (Some(_), Some(true)) => "applied",
            (Some(_), _) => "refused",
        }
    }
}

impl Store {
    /// Keep `info` as `node`'s branch settings and queue `cmd` (its
    /// `set_branch`), in one transaction. Returns the command as queued.
    pub async fn set_branch(
        &self,
        node: &str,
        info: &BranchInfo,
        by: &str,
        cmd: Command,
        sent_at: Option<i64>,
    ) -> Result<Command, StoreError> {
        let (node, by) = (node.to_owned(), by.to_owned());
        let json = serde_json::to_string(info).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.db
            .call(move |c| {
                let tx = c.transaction()?;
                let cmd = commands::enqueue(&tx, &node, &cmd, sent_at)?;
                tx.execute(
                    "INSERT INTO branches (node_id, info, updated_at, updated_by, command_id)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT(node_id) DO UPDATE SET info = ?2, updated_at = ?3,
                         updated_by = ?4, command_id = ?5",
                    params![node, json, cmd.issued_at, by, cmd.id],
                )?;
                tx.commit()?;
                Ok(cmd)
            })
            .await
    }

    /// `node`'s branch settings, if any were set through the controller.
    pub async fn branch(&self, node: &str) -> Result<Option<BranchRow>, StoreError> {
        let node = node.to_owned();
        self.db
            .call(move |c| {
                let row = c
                    .prepare_cached(
                        "SELECT b.info, b.updated_at, b.updated_by, b.command_id,
                                c.acked_at, c.ok, c.detail
                         FROM branches b LEFT JOIN commands c ON c.id = b.command_id
                         WHERE b.node_id = ?1",
                    )?
                    .query_row([&node], |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            BranchRow {
                                node_id: node.clone(),
                                info: BranchInfo::default(),
                                updated_at: r.get(1)?,
                                updated_by: r.get(2)?,
                                command_id: r.get(3)?,
                                acked_at: r.get(4)?,
                                ok: r.get(5)?,
                                detail: r.get(6)?,
                            },
                        ))
                    })
                    .optional()?;
                row.map(|(json, mut row)| {
                    row.info = serde_json::from_str(&json)
                        .map_err(|e| StoreError::Corrupt(format!("branches.info: {e}")))?;
                    Ok(row)
                })
                .transpose()
            })
            .await
    }
}
