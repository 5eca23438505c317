//! The branch's hours and facts as the controller sets them (`set_branch`):
//! checked, kept in the store (key [`KV_KEY`]) so they survive restarts, and
//! applied to every session at once. They replace the `[branch]` section of
//! the configuration; a setting that names no hours keeps the configured week.

use edgedesk_common::branch::BranchInfo;
use edgedesk_dialog::{Branch, Engine};

use crate::store::Store;

/// Where the controller's setting is kept in the node's store.
pub const KV_KEY: &str = "branch";

/// Check `info`, keep it, then answer from it. Returns what to acknowledge.
pub async fn apply(store: &Store, engine: &Engine, info: &BranchInfo) -> Result<(), String> {
    let branch =
        Branch::parse(info, engine.configured_branch()).map_err(|e| format!("refused: {e}"))?;
    let json = serde_json::to_string(info).map_err(|e| format!("refused: {e}"))?;
    store
        .kv_set(KV_KEY, &json)
        .await
        .map_err(|e| format!("not kept: {e}"))?;
    engine.set_branch(branch);
    tracing::info!("branch hours and facts from the controller applied");
    Ok(())
}

/// At start: answer from the controller's last setting, if there is one.
pub async fn restore(store: &Store, engine: &Engine) {
    let stored = match store.kv_get(KV_KEY).await {
        Ok(Some(json)) => json,
        Ok(None) => return,
        Err(e) => {
            tracing::error!(error = %e, "reading the branch settings failed; the configured ones apply");
            return;
        }
    };
    let parsed = serde_json::from_str::<BranchInfo>(&stored)
        .map_err(|e| e.to_string())
        .and_then(|info| {
            Branch::parse(&info, engine.configured_branch()).map_err(|e| e.to_string())
        });
    match parsed {
        Ok(b) => {
            engine.set_branch(b);
            tracing::info!(
                "branch hours and facts from the controller in use (they replace [branch])"
            );
        }
        Err(e) => {
            tracing::error!(error = %e, "stored branch settings are invalid; the configured ones apply")
        }
    }
}
