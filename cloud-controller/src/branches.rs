//! Setting a branch's hours and facts from the controller (REST, CLI, an
//! EdgeNode's `spec.branch`): checked by the dialog engine's own parser, so
//! the controller refuses exactly what a node would; stored together with
//! the `set_branch` command that carries them; delivered by the command
//! queue, which keeps it until the node acknowledges (a node offline for a
//! week gets it when it is back). Commands of the `branch` stream run in
//! order, so the latest setting wins on the node too.

use edgedesk_common::branch::BranchInfo;
use edgedesk_common::sync::CommandBody;
use edgedesk_dialog::{Branch, BranchError};

use crate::downlink::Downlink;
use crate::store::{BranchRow, Store, StoreError};

/// The command stream that keeps a node's branch changes in order.
pub const STREAM: &str = "branch";

#[derive(Debug, thiserror::Error)]
pub enum SetBranchError {
    #[error("no node {0:?}")]
    UnknownNode(String),
    #[error("node {0:?} is revoked")]
    Revoked(String),
    #[error(transparent)]
    Invalid(#[from] BranchError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Check `info` as a node would.
pub fn check(info: &BranchInfo) -> Result<(), BranchError> {
    // The fallback week only matters when `info` names no hours; any will do.
    Branch::parse(info, &Branch::uniform(9, 17, &[])).map(|_| ())
}

/// Store `info` as `node`'s branch and queue it for the node. Returns the
/// stored row. Setting what is already stored queues nothing new.
pub async fn set(
    store: &Store,
    downlink: &Downlink,
    node: &str,
    info: BranchInfo,
    by: &str,
) -> Result<BranchRow, SetBranchError> {
    check(&info)?;
    let row = store
        .node(node)
        .await?
        .ok_or_else(|| SetBranchError::UnknownNode(node.to_owned()))?;
    if row.revoked_at.is_some() {
        return Err(SetBranchError::Revoked(node.to_owned()));
    }
    if let Some(current) = store.branch(node).await? {
        if current.info == info {
            return Ok(current);
        }
    }
    let (cmd, sent_at) = downlink.prepare(
        node,
        CommandBody::SetBranch(info.clone()),
        Some(STREAM),
        None,
    );
    let cmd = store.set_branch(node, &info, by, cmd, sent_at).await?;
    if sent_at.is_some() {
        downlink.sent(node, cmd);
    }
    tracing::info!(node, by, "branch hours and facts set; queued for the node");
    store
        .branch(node)
        .await?
        .ok_or_else(|| SetBranchError::Store(StoreError::Corrupt("branch row vanished".into())))
}
