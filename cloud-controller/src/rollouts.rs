//! Rollouts as the controller runs them: the I/O around [`crate::rollout`].
//!
//! Each rollout's whole engine state is a JSON row in `rollouts`, written
//! after every step, with the id of the last command sent to each node; a
//! restarted controller loads it and carries on. Every `models.tick_ms` the
//! driver feeds each running rollout the fleet's online state, the outcome of
//! its commands (acknowledged `model_update` / `model_rollback`), the nodes'
//! post-swap health from their heartbeats, and the time; it queues the
//! commands the engine asks for. Operators create, pause, resume and abort
//! through the REST API (`/api/v1/rollouts`) or the CLI.

use std::collections::BTreeMap;

use edgedesk_common::sync::command as cmd;
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::link::{Hub, now_ms};
use crate::rollout::{Action, Input, NodeState, Phase, Rollout, Size, Strategy};
use crate::store::{self, StoreError};

/// Visitor turns on the new model before its low-confidence rate counts.
pub const MIN_HEALTH_TURNS: u64 = 20;

pub fn migrate(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS rollouts (
            id         TEXT PRIMARY KEY,
            model_id   TEXT NOT NULL,
            version    TEXT NOT NULL,
            selector   TEXT NOT NULL,
            phase      TEXT NOT NULL,
            state      TEXT NOT NULL,     -- crate::rollout::Rollout as JSON
            commands   TEXT NOT NULL,     -- node -> id of the last command sent
            created_at INTEGER NOT NULL,
            updated_at INTEGER NOT NULL
        );",
    )?;
    Ok(())
}

/// `POST /api/v1/rollouts`.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
pub struct CreateRollout {
    /// Release id, `name@version` or a version.
    pub model: String,
    /// Node labels that must all match (empty: every node).
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    /// Cumulative wave sizes: `"1"`, `"10%"`, …; default 1, 10%, 50%, 100%.
    #[serde(default)]
    pub waves: Vec<String>,
    #[serde(default)]
    pub bake_secs: Option<u64>,
    /// Failed nodes tolerated: a count (`"0"`) or a percentage (`"5%"`).
    #[serde(default)]
    pub failure_threshold: Option<String>,
    #[serde(default)]
    pub health_margin: Option<f64>,
    #[serde(default)]
    pub offline_deadline_secs: Option<u64>,
}

/// A rollout as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RolloutView {
    pub id: String,
    pub model_id: String,
    pub version: String,
    pub selector: BTreeMap<String, String>,
    pub phase: String,
    /// 1-based current wave and the number of waves.
    pub wave: usize,
    pub waves: usize,
    pub total: usize,
    pub updated: usize,
    pub failed: usize,
    pub skipped: usize,
    pub rolled_back: usize,
    pub detail: String,
    /// Per node: state and reason.
    #[schema(value_type = Object)]
    pub nodes: BTreeMap<String, serde_json::Value>,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error("{0}")]
    Invalid(String),
    #[error("no rollout {0:?}")]
    NotFound(String),
    #[error("no model release {0:?}")]
    NoModel(String),
    #[error("rollout {0} is {1}: nothing to do")]
    Finished(String, String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Clone)]
struct Row {
    id: String,
    model_id: String,
    version: String,
    selector: BTreeMap<String, String>,
    state: Rollout,
    commands: BTreeMap<String, String>,
    created_at: i64,
    updated_at: i64,
}

fn load(conn: &Connection, id: &str) -> Result<Option<Row>, StoreError> {
    conn.query_row(
        "SELECT id, model_id, version, selector, state, commands, created_at, updated_at FROM rollouts WHERE id = ?1",
        [id],
        row,
    )
    .optional()
    .map_err(Into::into)
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    let json = |i: usize, s: String| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, s.into())
    };
    let selector: String = r.get(3)?;
    let state: String = r.get(4)?;
    let commands: String = r.get(5)?;
    Ok(Row {
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

fn save(conn: &Connection, r: &Row, now: i64) -> Result<(), StoreError> {
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
            now
        ],
    )?;
    Ok(())
}

fn view(r: &Row) -> RolloutView {
    let s = &r.state;
    let (wave, detail) = match &s.phase {
        Phase::Rolling { wave, .. } | Phase::Baking { wave, .. } | Phase::Paused { wave } => {
            (wave + 1, String::new())
        }
        Phase::Aborting { reason } | Phase::Aborted { reason } => (0, reason.clone()),
        Phase::Succeeded => (s.waves(), String::new()),
    };
    RolloutView {
        id: r.id.clone(),
        model_id: r.model_id.clone(),
        version: r.version.clone(),
        selector: r.selector.clone(),
        phase: s.phase.name().into(),
        wave,
        waves: s.waves(),
        total: s.order.len(),
        updated: s.updated(),
        failed: s.failed(),
        skipped: s.count(|n| matches!(n, NodeState::Skipped { .. })),
        rolled_back: s.count(|n| matches!(n, NodeState::RolledBack)),
        detail,
        nodes: s
            .nodes
            .iter()
            .map(|(n, e)| {
                (
                    n.clone(),
                    serde_json::to_value(&e.state).unwrap_or_default(),
                )
            })
            .collect(),
        created_at: r.created_at,
        updated_at: r.updated_at,
    }
}

pub fn list(conn: &Connection) -> Result<Vec<RolloutView>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, model_id, version, selector, state, commands, created_at, updated_at FROM rollouts ORDER BY created_at DESC",
    )?;
    let rows = stmt.query_map([], row)?;
    Ok(rows
        .collect::<Result<Vec<_>, _>>()?
        .iter()
        .map(view)
        .collect())
}

pub fn get(conn: &Connection, id: &str) -> Result<Option<RolloutView>, StoreError> {
    Ok(load(conn, id)?.as_ref().map(view))
}

impl CreateRollout {
    fn strategy(&self) -> Result<Strategy, RolloutError> {
        let mut s = Strategy::default();
        if !self.waves.is_empty() {
            s.waves = self
                .waves
                .iter()
                .map(|w| Size::parse(w))
                .collect::<Result<_, _>>()
                .map_err(RolloutError::Invalid)?;
        }
        if let Some(b) = self.bake_secs {
            s.bake_ms = b as i64 * 1000;
        }
        if let Some(t) = &self.failure_threshold {
            s.failure_threshold = if t.trim() == "0" {
                Size::Count(0)
            } else {
                Size::parse(t).map_err(RolloutError::Invalid)?
            };
        }
        if let Some(m) = self.health_margin {
            s.health_margin = m;
        }
        if let Some(d) = self.offline_deadline_secs {
            s.offline_deadline_ms = d as i64 * 1000;
        }
        s.validate().map_err(RolloutError::Invalid)?;
        Ok(s)
    }
}

/// Create a rollout and take its first step.
pub async fn create(hub: &Hub, req: CreateRollout) -> Result<RolloutView, RolloutError> {
    let strategy = req.strategy()?;
    let key = req.model.clone();
    let model = hub
        .db
        .call(move |c| crate::models::get(c, &key))
        .await?
        .ok_or_else(|| RolloutError::NoModel(req.model.clone()))?;
    let nodes = hub.db.call(|c| store::nodes(c)).await?;
    let fleet: BTreeMap<_, _> = nodes
        .into_iter()
        .filter(|n| n.revoked_at.is_none())
        .map(|n| (n.id.clone(), (n.labels.clone(), hub.is_online(&n.id))))
        .collect();
    let now = now_ms();
    let (state, actions) = Rollout::new(strategy, &req.selector, &fleet, now);
    if state.order.is_empty() {
        return Err(RolloutError::Invalid(
            "the selector matches no enrolled node".into(),
        ));
    }
    let mut r = Row {
        id: format!("ro-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
        model_id: model.id.clone(),
        version: model.version.clone(),
        selector: req.selector,
        state,
        commands: BTreeMap::new(),
        created_at: now,
        updated_at: now,
    };
    tracing::info!(rollout = %r.id, version = %r.version, targets = r.state.order.len(), "rollout created");
    execute(hub, &mut r, actions).await;
    let saved = persist(hub, &r).await?;
    Ok(saved)
}

async fn persist(hub: &Hub, r: &Row) -> Result<RolloutView, StoreError> {
    let now = now_ms();
    let copy = Row {
        updated_at: now,
        ..r.clone()
    };
    hub.db
        .call(move |c| {
            save(c, &copy, now)?;
            Ok(view(&copy))
        })
        .await
}

/// Queue the commands the engine asked for; log its phase changes.
async fn execute(hub: &Hub, r: &mut Row, actions: Vec<Action>) {
    // The release is read once per batch of actions, and only if needed.
    let mut release = None;
    for a in actions {
        let (node, kind, args) = match a {
            Action::Update { node } => {
                if release.is_none() {
                    let key = r.model_id.clone();
                    release = match hub.db.call(move |c| crate::models::get(c, &key)).await {
                        Ok(Some(m)) => Some(m.signed),
                        _ => {
                            tracing::error!(rollout = %r.id, "the rollout's release vanished");
                            continue;
                        }
                    };
                }
                let release = release.clone().expect("loaded above");
                let args = serde_json::json!(cmd::ModelUpdate {
                    rollout: r.id.clone(),
                    release,
                });
                (node, cmd::MODEL_UPDATE, args)
            }
            Action::Rollback { node } => {
                let args = serde_json::json!(cmd::ModelRollback {
                    rollout: r.id.clone(),
                    to_version: String::new(),
                });
                (node, cmd::MODEL_ROLLBACK, args)
            }
            Action::Phase { phase, detail } => {
                tracing::info!(rollout = %r.id, %phase, %detail, "rollout phase");
                continue;
            }
        };
        match hub.queue_command(&node, kind, args, None).await {
            Ok(c) => {
                r.commands.insert(node, c.id);
            }
            Err(e) => {
                tracing::error!(rollout = %r.id, %node, kind, error = %e, "queueing a model command failed")
            }
        }
    }
}

/// An operator's command.
pub async fn operate(hub: &Hub, id: &str, op: &str) -> Result<RolloutView, RolloutError> {
    let key = id.to_owned();
    let mut r = hub
        .db
        .call(move |c| load(c, &key))
        .await?
        .ok_or_else(|| RolloutError::NotFound(id.to_owned()))?;
    if r.state.phase.is_terminal() {
        return Err(RolloutError::Finished(
            r.id.clone(),
            r.state.phase.name().into(),
        ));
    }
    let input = match op {
        "pause" => Input::Pause,
        "resume" => Input::Resume { now: now_ms() },
        "abort" => Input::Abort {
            reason: "aborted by the operator".into(),
        },
        other => return Err(RolloutError::Invalid(format!("unknown operation {other}"))),
    };
    tracing::info!(rollout = %r.id, op, "rollout operation");
    let actions = r.state.step(input);
    execute(hub, &mut r, actions).await;
    Ok(persist(hub, &r).await?)
}

/// One driver pass over every running rollout.
pub async fn tick(hub: &Hub) -> Result<(), StoreError> {
    let rows: Vec<Row> = hub
        .db
        .call(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, model_id, version, selector, state, commands, created_at, updated_at
                 FROM rollouts WHERE phase NOT IN ('succeeded', 'aborted')",
            )?;
            let rows = stmt.query_map([], row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await?;
    for mut r in rows {
        let before = serde_json::to_string(&r.state).unwrap_or_default();
        let mut inputs = Vec::new();
        for node in r.state.order.clone() {
            inputs.push(Input::Online {
                online: hub.is_online(&node),
                node,
            });
        }
        // Outcomes of the commands in flight.
        let pending: Vec<(String, String, NodeState)> = r
            .commands
            .iter()
            .filter_map(|(n, c)| {
                let s = r.state.nodes.get(n)?.state.clone();
                matches!(s, NodeState::Updating { .. } | NodeState::RollingBack)
                    .then(|| (n.clone(), c.clone(), s))
            })
            .collect();
        let ids: Vec<(String, String)> = pending
            .iter()
            .map(|(n, c, _)| (n.clone(), c.clone()))
            .collect();
        let outcomes = hub
            .db
            .call(move |c| {
                let mut out = Vec::new();
                for (node, id) in &ids {
                    let row: Option<(Option<bool>, Option<String>)> = c
                        .query_row(
                            "SELECT ok, detail FROM commands WHERE id = ?1 AND acked_at IS NOT NULL",
                            [id],
                            |r| Ok((r.get(0)?, r.get(1)?)),
                        )
                        .optional()?;
                    if let Some((ok, detail)) = row {
                        out.push((node.clone(), ok.unwrap_or(false), detail.unwrap_or_default()));
                    }
                }
                Ok(out)
            })
            .await?;
        let now = now_ms();
        for (node, ok, detail) in outcomes {
            let state = &r.state.nodes[&node].state;
            inputs.push(match (state, ok) {
                (NodeState::Updating { .. }, true) => Input::Updated { node, now },
                (NodeState::Updating { .. }, false) => Input::UpdateFailed {
                    node,
                    reason: detail,
                },
                (_, true) => Input::RolledBack { node },
                (_, false) => Input::RollbackFailed {
                    node,
                    reason: detail,
                },
            });
        }
        // Post-swap health from heartbeats of updated nodes.
        let updated: Vec<String> = r
            .state
            .nodes
            .iter()
            .filter(|(_, e)| matches!(e.state, NodeState::Updated { .. }))
            .map(|(n, _)| n.clone())
            .collect();
        if !updated.is_empty() {
            let version = r.version.clone();
            let health = hub
                .db
                .call(move |c| {
                    let mut out = Vec::new();
                    for n in &updated {
                        if let Some(row) = store::node(c, n)? {
                            let h = row
                                .heartbeat
                                .as_ref()
                                .and_then(|hb| hb.get("model_health").cloned())
                                .and_then(|v| {
                                    serde_json::from_value::<edgedesk_common::sync::ModelHealth>(v)
                                        .ok()
                                });
                            if let Some(h) = h.filter(|h| {
                                h.version == version
                                    && h.turns >= MIN_HEALTH_TURNS
                                    && h.previous_turns >= MIN_HEALTH_TURNS
                            }) {
                                out.push((n.clone(), h));
                            }
                        }
                    }
                    Ok(out)
                })
                .await?;
            for (node, h) in health {
                inputs.push(Input::Health {
                    node,
                    baseline: h.previous_low_confidence_rate,
                    current: h.low_confidence_rate,
                });
            }
        }
        inputs.push(Input::Tick { now });
        let mut actions = Vec::new();
        for i in inputs {
            actions.extend(r.state.step(i));
        }
        execute(hub, &mut r, actions).await;
        if serde_json::to_string(&r.state).unwrap_or_default() != before {
            persist(hub, &r).await?;
        }
    }
    Ok(())
}

/// Run the driver until `shutdown`.
pub async fn run(hub: std::sync::Arc<Hub>, shutdown: tokio_util::sync::CancellationToken) {
    let mut every =
        tokio::time::interval(std::time::Duration::from_millis(hub.config.models.tick_ms));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = every.tick() => {
                if !hub.leader.load(std::sync::atomic::Ordering::SeqCst) {
                    continue;
                }
                if let Err(e) = tick(&hub).await {
                    tracing::error!(error = %e, "rollout driver pass failed");
                }
            }
        }
    }
}
