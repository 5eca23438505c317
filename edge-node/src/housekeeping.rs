//! Background upkeep: end conversations idle too long (when no connection
//! holds them), enforce the transcript age limit and the outbox disk budget,
//! refresh the outbox gauges.

use std::sync::Arc;
use std::time::Duration;

use edgedesk_dialog::Conversation;
use crate::server::AppState;
use crate::server::ws::{build_write, now_ms};
use crate::store::{RetentionStats, StoreError};

/// What one pass did.
#[derive(Debug, Default, PartialEq)]
pub struct Pass {
    pub idle_closed: usize,
    pub retention: RetentionStats,
    pub outbox_depth: u64,
    /// Routine summaries dropped by this pass to respect the outbox budget.
    pub compacted: u64,
}

pub async fn run(app: Arc<AppState>) {
    let mut tick = tokio::time::interval(Duration::from_secs(app.config.retention.interval_secs));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = app.shutdown.cancelled() => break,
            _ = tick.tick() => match pass(&app, now_ms()).await {
                Ok(p) => {
                    if p.idle_closed > 0 || p.retention != RetentionStats::default() {
                        tracing::info!(idle_closed = p.idle_closed, deleted = ?p.retention, "housekeeping");
                    }
                }
                Err(e) => tracing::error!(error = %e, "housekeeping failed"),
            },
        }
    }
}

/// One housekeeping pass at time `now` (milliseconds).
pub async fn pass(app: &AppState, now: i64) -> Result<Pass, StoreError> {
    let r = &app.config.retention;
    let idle_cutoff = now - i64::from(r.idle_conversation_minutes) * 60_000;
    let mut out = Pass::default();
    for row in app.store.idle_sessions(idle_cutoff, 1000).await? {
        if app.is_live(&row.id) {
            continue; // its connection ends it itself
        }
        let Ok(mut conv) = serde_json::from_str::<Conversation>(&row.state) else {
            tracing::warn!(session = %row.id, "unreadable session state; skipped");
            continue;
        };
        let Some(summary) = app.engine.end(&mut conv, "idle", now) else {
            continue;
        };
        let write = build_write(
            &row.id,
            &row.token_hash,
            row.created_at,
            &conv,
            Vec::new(),
            vec![summary],
            None,
        );
        // Keep the session's last_seen: ending it is not visitor activity.
        let mut write = write;
        write.session.last_seen = row.last_seen;
        app.store.commit(write).await?;
        app.metrics.ended("idle");
        app.outbox_notify.notify_one();
        out.idle_closed += 1;
    }
    let retention_cutoff = now - i64::from(r.transcript_max_age_days) * 86_400_000;
    out.retention = app.store.enforce_retention(retention_cutoff).await?;
    // The outbox budget holds whether or not a cloud link exists.
    let c = app
        .store
        .outbox_compact(app.config.cloud.outbox_budget_bytes)
        .await?;
    out.compacted = c.dropped;
    app.metrics.outbox_compacted.set(c.dropped_total as i64);
    out.outbox_depth = app.store.outbox_depth().await?;
    app.metrics.outbox_depth.set(out.outbox_depth as i64);
    Ok(out)
}
