//! Background upkeep: end conversations idle too long (when no connection
//! holds them), enforce the transcript age limit and the outbox disk budget,
//! refresh the outbox gauges; every couple of seconds, follow visitors who
//! left an escalated chat (shown as gone to the agent, out of the queue
//! after the grace).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::{CloudConfig, RetentionConfig};
use crate::metrics::Metrics;
use crate::session::{Sessions, now_ms};
use crate::store::{RetentionStats, Store, StoreError};

/// How often departed visitors are checked on.
const DEPARTURE_TICK: Duration = Duration::from_secs(2);

/// What one pass did.
#[derive(Debug, Default, PartialEq)]
pub struct Pass {
    pub idle_closed: usize,
    pub retention: RetentionStats,
    pub outbox_depth: u64,
    /// Routine summaries dropped by this pass to respect the outbox budget.
    pub compacted: u64,
}

/// What housekeeping needs, wired by [`crate::run`].
pub struct Keeper {
    pub retention: RetentionConfig,
    pub cloud: CloudConfig,
    pub sessions: Arc<Sessions>,
    pub store: Store,
    pub metrics: Arc<Metrics>,
}

impl Keeper {
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(self.retention.interval_secs));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut departures = tokio::time::interval(DEPARTURE_TICK);
        departures.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Escalated chats nobody holds since before a restart are followed too.
        self.sessions.adopt_departures().await;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = departures.tick() => {
                    let withdrawn = self.sessions.check_departures(now_ms()).await;
                    if withdrawn > 0 {
                        tracing::info!(withdrawn, "visitors who left were taken out of the queue");
                    }
                }
                _ = tick.tick() => match self.pass(now_ms()).await {
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
    pub async fn pass(&self, now: i64) -> Result<Pass, StoreError> {
        let r = &self.retention;
        let idle_cutoff = now - i64::from(r.idle_conversation_minutes) * 60_000;
        let mut out = Pass {
            idle_closed: self.sessions.end_idle_stored(idle_cutoff, now).await?,
            ..Pass::default()
        };
        let retention_cutoff = now - i64::from(r.transcript_max_age_days) * 86_400_000;
        out.retention = self.store.enforce_retention(retention_cutoff).await?;
        // The outbox budget holds whether or not a cloud link exists.
        let c = self
            .store
            .outbox_compact(self.cloud.outbox_budget_bytes)
            .await?;
        out.compacted = c.dropped;
        self.metrics.outbox_compacted.set(c.dropped_total as i64);
        out.outbox_depth = self.store.outbox_depth().await?;
        self.metrics.outbox_depth.set(out.outbox_depth as i64);
        Ok(out)
    }
}
