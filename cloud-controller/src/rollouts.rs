//! Rollouts as the controller runs them: the I/O around [`crate::rollout`].
//!
//! Each rollout's whole engine state is a JSON row in `rollouts`, written
//! after every step, with the id of the last command sent to each node; a
//! restarted controller loads it and carries on. Every `models.tick_ms` the
//! driver feeds each running rollout the fleet's online state, the outcome of
//! its commands (acknowledged `model_update` / `model_rollback`), the nodes'
//! post-swap health and shadow counts from their heartbeats, and the time;
//! it queues the
//! commands the engine asks for. Operators create, pause, resume and abort
//! through the REST API (`/api/v1/rollouts`) or the CLI.

use std::collections::BTreeMap;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use edgedesk_common::sync::{CommandBody, ModelRollback, ModelShadow, ModelShadowEnd, ModelUpdate};
use serde::{Deserialize, Serialize};

use crate::downlink::{Downlink, now_ms};
use crate::rollout::{Action, Input, NodeState, Phase, Rollout, ShadowCounts, Size, Strategy};
use crate::store::{RolloutRow as Row, Store, StoreError};

/// Visitor turns on the new model before its low-confidence rate counts.
pub const MIN_HEALTH_TURNS: u64 = 20;

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
    /// Run the candidate in shadow on every target for this long before the
    /// first wave (it answers nobody); the shadow gate then decides.
    #[serde(default)]
    pub shadow_secs: Option<u64>,
    /// Shadow gate: the share of turns on which the candidate must agree
    /// with the active model (default 0.9).
    #[serde(default)]
    pub shadow_min_agreement: Option<f64>,
    /// Shadow gate: how much slower per turn the candidate may be
    /// (default 0.5, i.e. up to 1.5 ×).
    #[serde(default)]
    pub shadow_latency_margin: Option<f64>,
    /// Shadow gate: fewest turns compared to judge at all (default 20).
    #[serde(default)]
    pub shadow_min_turns: Option<u64>,
}

/// What the shadow phase has seen so far, over every target.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ShadowView {
    /// When the shadow phase ends (ms), 0 once it is over.
    pub until: i64,
    pub turns: u64,
    /// Share of turns on which the candidate gave the active model's intent.
    pub agreement: f64,
    pub min_agreement: f64,
    /// Turns where one model would answer and the other would not.
    pub oos_disagreements: u64,
    /// Mean of the candidate's confidence minus the active model's.
    pub mean_confidence_delta: f64,
    /// Mean microseconds per turn, by each model.
    pub active_us: f64,
    pub candidate_us: f64,
    /// Nodes that reported counts.
    pub nodes_reporting: usize,
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
    /// The shadow phase's figures, when the rollout has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowView>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl ShadowView {
    /// One line for people: "agreement 97.2 % over 480 turns (min 90 %), 3
    /// out-of-scope disagreements, 310 µs vs 290 µs a turn".
    pub fn summary(&self) -> String {
        format!(
            "agreement {:.1} % over {} turns (min {:.0} %), {} out-of-scope disagreements, {:.0} µs vs {:.0} µs a turn",
            self.agreement * 100.0,
            self.turns,
            self.min_agreement * 100.0,
            self.oos_disagreements,
            self.candidate_us,
            self.active_us
        )
    }
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

/// What the driver needs: the store, the way down to nodes, and whether
/// this replica leads (only the leader drives rollouts).
#[derive(Clone)]
pub struct Rollouts {
    pub store: Store,
    pub downlink: Downlink,
    pub leader: Arc<AtomicBool>,
    pub tick_ms: u64,
}

fn view(r: &Row) -> RolloutView {
    let s = &r.state;
    let (wave, detail) = match &s.phase {
        Phase::Shadow { .. } => (0, String::new()),
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
        shadow: (s.strategy.shadow_ms > 0).then(|| {
            let t: ShadowCounts = s.shadow_totals();
            let (active_us, candidate_us) = t.latency_us();
            ShadowView {
                until: match s.phase {
                    Phase::Shadow { until } => until,
                    _ => 0,
                },
                turns: t.turns,
                agreement: t.agreement(),
                min_agreement: s.strategy.shadow_min_agreement,
                oos_disagreements: t.oos_disagreements,
                mean_confidence_delta: t.confidence_delta_sum / t.turns.max(1) as f64,
                active_us,
                candidate_us,
                nodes_reporting: s.nodes.values().filter(|e| e.shadow.is_some()).count(),
            }
        }),
        created_at: r.created_at,
        updated_at: r.updated_at,
    }
}

impl Rollouts {
    /// Every rollout, newest first.
    pub async fn list(&self) -> Result<Vec<RolloutView>, StoreError> {
        Ok(self.store.rollouts().await?.iter().map(view).collect())
    }

    pub async fn get(&self, id: &str) -> Result<Option<RolloutView>, StoreError> {
        Ok(self.store.rollout(id).await?.as_ref().map(view))
    }
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
        if let Some(d) = self.shadow_secs {
            s.shadow_ms = d as i64 * 1000;
        }
        if let Some(a) = self.shadow_min_agreement {
            s.shadow_min_agreement = a;
        }
        if let Some(m) = self.shadow_latency_margin {
            s.shadow_latency_margin = m;
        }
        if let Some(t) = self.shadow_min_turns {
            s.shadow_min_turns = t;
        }
        s.validate().map_err(RolloutError::Invalid)?;
        Ok(s)
    }
}

impl Rollouts {
    /// Create a rollout and take its first step.
    pub async fn create(&self, req: CreateRollout) -> Result<RolloutView, RolloutError> {
        let strategy = req.strategy()?;
        let model = self
            .store
            .model(&req.model)
            .await?
            .ok_or_else(|| RolloutError::NoModel(req.model.clone()))?;
        let nodes = self.store.nodes().await?;
        let fleet: BTreeMap<_, _> = nodes
            .into_iter()
            .filter(|n| n.revoked_at.is_none())
            .map(|n| {
                let online = self.downlink.is_online(&n.id);
                (n.id.clone(), (n.labels.clone(), online))
            })
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
        self.execute(&mut r, actions).await;
        Ok(self.persist(r).await?)
    }

    async fn persist(&self, mut r: Row) -> Result<RolloutView, StoreError> {
        r.updated_at = now_ms();
        let v = view(&r);
        self.store.rollout_save(r).await?;
        Ok(v)
    }

    /// Queue the commands the engine asked for; log its phase changes.
    async fn execute(&self, r: &mut Row, actions: Vec<Action>) {
        // The release is read once per batch of actions, and only if needed.
        let mut release = None;
        for a in actions {
            if matches!(a, Action::Update { .. } | Action::Shadow { .. }) && release.is_none() {
                release = match self.store.model(&r.model_id).await {
                    Ok(Some(m)) => Some(m.signed),
                    _ => {
                        tracing::error!(rollout = %r.id, "the rollout's release vanished");
                        continue;
                    }
                };
            }
            let (node, body) = match a {
                Action::Shadow { node, until } => {
                    let release = release.clone().expect("loaded above");
                    // The node stops on its own when the phase ends.
                    let for_secs = ((until - now_ms()).max(0) as u64).div_ceil(1000);
                    let body = CommandBody::ModelShadow(ModelShadow {
                        rollout: r.id.clone(),
                        release,
                        for_secs,
                    });
                    (node, body)
                }
                Action::Update { node } => {
                    let release = release.clone().expect("loaded above");
                    let body = CommandBody::ModelUpdate(ModelUpdate {
                        rollout: r.id.clone(),
                        release,
                    });
                    (node, body)
                }
                Action::EndShadow { node } => (
                    node,
                    CommandBody::ModelShadowEnd(ModelShadowEnd {
                        rollout: r.id.clone(),
                    }),
                ),
                Action::Rollback { node } => {
                    let body = CommandBody::ModelRollback(ModelRollback {
                        rollout: r.id.clone(),
                        to_version: String::new(),
                    });
                    (node, body)
                }
                Action::Phase { phase, detail } => {
                    tracing::info!(rollout = %r.id, %phase, %detail, "rollout phase");
                    continue;
                }
            };
            let kind = body.kind();
            match self.downlink.queue(&node, body, None).await {
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
    pub async fn operate(&self, id: &str, op: &str) -> Result<RolloutView, RolloutError> {
        let mut r = self
            .store
            .rollout(id)
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
        self.execute(&mut r, actions).await;
        Ok(self.persist(r).await?)
    }

    /// One driver pass over every running rollout.
    pub async fn tick(&self) -> Result<(), StoreError> {
        for mut r in self.store.rollouts_running().await? {
            let before = serde_json::to_string(&r.state).unwrap_or_default();
            let mut inputs = Vec::new();
            for node in r.state.order.clone() {
                inputs.push(Input::Online {
                    online: self.downlink.is_online(&node),
                    node,
                });
            }
            // Outcomes of the commands in flight.
            let pending: Vec<String> = r
                .commands
                .iter()
                .filter(|(n, _)| {
                    r.state.nodes.get(*n).is_some_and(|e| {
                        matches!(e.state, NodeState::Updating { .. } | NodeState::RollingBack)
                    })
                })
                .map(|(_, c)| c.clone())
                .collect();
            let by_command: BTreeMap<String, String> = r
                .commands
                .iter()
                .map(|(n, c)| (c.clone(), n.clone()))
                .collect();
            let now = now_ms();
            for (id, ok, detail) in self.store.command_outcomes(pending).await? {
                let Some(node) = by_command.get(&id).cloned() else {
                    continue;
                };
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
            // Shadow counts from the heartbeats of nodes running the candidate.
            if matches!(r.state.phase, Phase::Shadow { .. }) {
                for (n, e) in &r.state.nodes {
                    if !e.shadowing {
                        continue;
                    }
                    let Some(row) = self.store.node(n).await? else {
                        continue;
                    };
                    let report = row
                        .heartbeat
                        .and_then(|hb| hb.shadow)
                        .filter(|s| s.rollout == r.id);
                    if let Some(s) = report {
                        inputs.push(Input::Shadow {
                            node: n.clone(),
                            counts: ShadowCounts::from(&s),
                        });
                    }
                }
            }
            // Post-swap health from heartbeats of updated nodes.
            for (n, e) in &r.state.nodes {
                if !matches!(e.state, NodeState::Updated { .. }) {
                    continue;
                }
                let Some(row) = self.store.node(n).await? else {
                    continue;
                };
                let health = row.heartbeat.and_then(|hb| hb.model_health).filter(|h| {
                    h.version == r.version
                        && h.turns >= MIN_HEALTH_TURNS
                        && h.previous_turns >= MIN_HEALTH_TURNS
                });
                if let Some(h) = health {
                    inputs.push(Input::Health {
                        node: n.clone(),
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
            self.execute(&mut r, actions).await;
            if serde_json::to_string(&r.state).unwrap_or_default() != before {
                self.persist(r).await?;
            }
        }
        Ok(())
    }

    /// Run the driver until `shutdown`.
    pub async fn run(self, shutdown: tokio_util::sync::CancellationToken) {
        let mut every = tokio::time::interval(std::time::Duration::from_millis(self.tick_ms));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = every.tick() => {
                    if !self.leader.load(Ordering::SeqCst) {
                        continue;
                    }
                    if let Err(e) = self.tick().await {
                        tracing::error!(error = %e, "rollout driver pass failed");
                    }
                }
            }
        }
    }
}
