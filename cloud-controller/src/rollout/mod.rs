//! Model rollouts: an I/O-free state machine.
//!
//! A rollout takes one model version to the nodes a label selector picks, in
//! waves (cumulative sizes: one canary node, then 10 %, 50 %, 100 %…), with a
//! bake time after each wave. Inputs are the operator's commands (pause,
//! resume, abort), the nodes' reports (updated, failed, rolled back, health
//! after the swap, online or not) and time. Outputs are [`Action`]s: update or
//! roll back a node, and phase changes to record. The driver (`rollouts.rs`)
//! persists the whole [`Rollout`] after every step, so a restarted controller
//! resumes where it was.
//!
//! Policy:
//! - with a shadow phase (`shadow_ms` > 0), every target first runs the
//!   candidate beside its active model without answering; when the phase
//!   ends, the shadow gate reads the nodes' counts: enough turns, agreement
//!   with the active model at least `shadow_min_agreement`, and the
//!   candidate no slower than `shadow_latency_margin` allows. A failed gate
//!   aborts before any node is updated;
//! - a wave's nodes are told to update when online; an offline node is waited
//!   for until `offline_deadline_ms` after its wave started, then skipped
//!   (reported, not counted as failed);
//! - failed nodes beyond `failure_threshold` abort the rollout;
//! - during a bake, the health gate compares the updated nodes' low-confidence
//!   rate with the rate they had on the previous model; a rise above
//!   `health_margin` aborts;
//! - an abort (operator or automatic) rolls every updated or updating node
//!   back; the rollout ends `aborted` once each of them is back or reported
//!   failed.
//!
//! Invariants (property-tested): no more nodes are ever told to update than
//! the current wave's cumulative size; no node outside the selector is ever
//! touched; after an abort every node that was updated ends rolled back or
//! failed; no node is updated before the shadow gate has passed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[cfg(test)]
mod tests;

pub type NodeId = String;

/// A wave's cumulative size.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Size {
    /// This many nodes in total by the end of the wave.
    Count(u32),
    /// This percentage (0–100] of the targets in total, rounded up.
    Percent(f64),
}

impl Size {
    /// Cumulative node count for `total` targets (at least 1 when total > 0).
    pub fn of(self, total: usize) -> usize {
        let n = match self {
            Size::Count(n) => n as usize,
            Size::Percent(p) => ((p.clamp(0.0, 100.0) / 100.0) * total as f64).ceil() as usize,
        };
        n.clamp(usize::from(total > 0), total)
    }

    /// Parse `3` (count) or `10%` (percentage).
    pub fn parse(s: &str) -> Result<Size, String> {
        let s = s.trim();
        if let Some(p) = s.strip_suffix('%') {
            let p: f64 = p
                .trim()
                .parse()
                .map_err(|_| format!("{s:?} is not a percentage"))?;
            if !(p > 0.0 && p <= 100.0) {
                return Err(format!("{s:?}: a percentage must be in (0, 100]"));
            }
            Ok(Size::Percent(p))
        } else {
            let n: u32 = s
                .parse()
                .map_err(|_| format!("{s:?} is neither a node count nor a percentage"))?;
            if n == 0 {
                return Err("a wave of 0 nodes".into());
            }
            Ok(Size::Count(n))
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Strategy {
    /// Cumulative wave sizes; the last one is taken to cover every target.
    pub waves: Vec<Size>,
    /// Wait after a wave completes before the next (health gate applies).
    pub bake_ms: i64,
    /// More failed nodes than this aborts the rollout.
    pub failure_threshold: Size,
    /// Largest allowed rise of the low-confidence rate (0.05 = 5 points).
    pub health_margin: f64,
    /// How long a wave waits for an offline node before skipping it.
    pub offline_deadline_ms: i64,
    /// Shadow phase before the first wave (0: none).
    #[serde(default)]
    pub shadow_ms: i64,
    /// The shadow gate: the share of turns on which the candidate must give
    /// the active model's intent.
    #[serde(default = "default_min_agreement")]
    pub shadow_min_agreement: f64,
    /// The shadow gate: how much slower per turn the candidate may be
    /// (0.5: up to 1.5 × the active model's time).
    #[serde(default = "default_latency_margin")]
    pub shadow_latency_margin: f64,
    /// The shadow gate: fewer turns compared than this is no evidence, and
    /// the rollout is refused.
    #[serde(default = "default_min_turns")]
    pub shadow_min_turns: u64,
}

fn default_min_agreement() -> f64 {
    0.9
}

fn default_latency_margin() -> f64 {
    0.5
}

fn default_min_turns() -> u64 {
    20
}

impl Default for Strategy {
    fn default() -> Self {
        Strategy {
            waves: vec![
                Size::Count(1),
                Size::Percent(10.0),
                Size::Percent(50.0),
                Size::Percent(100.0),
            ],
            bake_ms: 60_000,
            failure_threshold: Size::Count(0),
            health_margin: 0.05,
            offline_deadline_ms: 600_000,
            shadow_ms: 0,
            shadow_min_agreement: default_min_agreement(),
            shadow_latency_margin: default_latency_margin(),
            shadow_min_turns: default_min_turns(),
        }
    }
}

impl Strategy {
    pub fn validate(&self) -> Result<(), String> {
        if self.waves.is_empty() {
            return Err("a rollout needs at least one wave".into());
        }
        if self.bake_ms < 0 || self.offline_deadline_ms < 0 {
            return Err("bake time and offline deadline cannot be negative".into());
        }
        if !(0.0..=1.0).contains(&self.health_margin) {
            return Err("health margin must be within 0..1".into());
        }
        if self.shadow_ms < 0 {
            return Err("the shadow phase cannot be negative".into());
        }
        if !(0.0..=1.0).contains(&self.shadow_min_agreement) {
            return Err("shadow minimum agreement must be within 0..1".into());
        }
        if !(0.0..=100.0).contains(&self.shadow_latency_margin) {
            return Err("shadow latency margin must be within 0..100".into());
        }
        Ok(())
    }

    /// Failures tolerated among `total` targets (`Count(0)`: none).
    fn tolerated(&self, total: usize) -> usize {
        match self.failure_threshold {
            Size::Count(n) => n as usize,
            Size::Percent(p) => ((p.clamp(0.0, 100.0) / 100.0) * total as f64).floor() as usize,
        }
    }
}

/// Where one target node is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum NodeState {
    Waiting,
    Updating { since: i64 },
    Updated { at: i64 },
    Failed { reason: String },
    Skipped { reason: String },
    RollingBack,
    RolledBack,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeEntry {
    pub state: NodeState,
    /// Low-confidence rate on the previous model, as the node last reported.
    pub baseline: Option<f64>,
    /// Low-confidence rate on the new model since the swap.
    pub current: Option<f64>,
    /// Told to run the candidate in shadow.
    #[serde(default)]
    pub shadowing: bool,
    /// The node's shadow counts, as last reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowCounts>,
}

/// A node's shadow counts (cumulative, from its heartbeats).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ShadowCounts {
    pub turns: u64,
    pub agreed: u64,
    pub oos_disagreements: u64,
    pub confidence_delta_sum: f64,
    pub active_us: u64,
    pub candidate_us: u64,
}

impl From<&edgedesk_common::sync::ShadowReport> for ShadowCounts {
    fn from(s: &edgedesk_common::sync::ShadowReport) -> Self {
        ShadowCounts {
            turns: s.turns,
            agreed: s.agreed,
            oos_disagreements: s.oos_disagreements,
            confidence_delta_sum: s.confidence_delta_sum,
            active_us: s.active_us,
            candidate_us: s.candidate_us,
        }
    }
}

impl ShadowCounts {
    fn add(&mut self, o: &ShadowCounts) {
        self.turns += o.turns;
        self.agreed += o.agreed;
        self.oos_disagreements += o.oos_disagreements;
        self.confidence_delta_sum += o.confidence_delta_sum;
        self.active_us += o.active_us;
        self.candidate_us += o.candidate_us;
    }

    pub fn agreement(&self) -> f64 {
        if self.turns == 0 {
            0.0
        } else {
            self.agreed as f64 / self.turns as f64
        }
    }

    /// Mean microseconds per turn: (active, candidate).
    pub fn latency_us(&self) -> (f64, f64) {
        let n = self.turns.max(1) as f64;
        (self.active_us as f64 / n, self.candidate_us as f64 / n)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    /// The candidate runs in shadow on every target until `until`; then the
    /// shadow gate decides.
    Shadow {
        until: i64,
    },
    /// Updating the nodes of wave `wave` (0-based), started at `since`.
    Rolling {
        wave: usize,
        since: i64,
    },
    /// Wave `wave` is done; the next starts at `until` if the gate holds.
    Baking {
        wave: usize,
        until: i64,
    },
    /// Paused by the operator in `wave`; nothing new is started.
    Paused {
        wave: usize,
    },
    /// Rolling updated nodes back.
    Aborting {
        reason: String,
    },
    Succeeded,
    Aborted {
        reason: String,
    },
}

impl Phase {
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Shadow { .. } => "shadow",
            Phase::Rolling { .. } => "rolling",
            Phase::Baking { .. } => "baking",
            Phase::Paused { .. } => "paused",
            Phase::Aborting { .. } => "aborting",
            Phase::Succeeded => "succeeded",
            Phase::Aborted { .. } => "aborted",
        }
    }

    pub fn is_terminal(&self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Aborted { .. })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Input {
    Tick {
        now: i64,
    },
    Online {
        node: NodeId,
        online: bool,
    },
    Updated {
        node: NodeId,
        now: i64,
    },
    UpdateFailed {
        node: NodeId,
        reason: String,
    },
    RolledBack {
        node: NodeId,
    },
    RollbackFailed {
        node: NodeId,
        reason: String,
    },
    /// A node's shadow counts (cumulative).
    Shadow {
        node: NodeId,
        counts: ShadowCounts,
    },
    /// Low-confidence rates before (previous model) and after the swap.
    Health {
        node: NodeId,
        baseline: f64,
        current: f64,
    },
    Pause,
    Resume {
        now: i64,
    },
    Abort {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Action {
    /// Run the candidate in shadow until the phase ends.
    Shadow {
        node: NodeId,
        until: i64,
    },
    /// Stop the candidate's shadow run now (aborted during the phase).
    EndShadow {
        node: NodeId,
    },
    Update {
        node: NodeId,
    },
    Rollback {
        node: NodeId,
    },
    /// The phase changed (for events and logs).
    Phase {
        phase: String,
        detail: String,
    },
}

/// One rollout's whole state (persisted as JSON by the driver).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    pub strategy: Strategy,
    /// Targets in wave order (fixed at creation).
    pub order: Vec<NodeId>,
    pub nodes: BTreeMap<NodeId, NodeEntry>,
    pub online: BTreeMap<NodeId, bool>,
    pub phase: Phase,
    /// Nodes ever told to update (for the wave-size invariant).
    pub started: usize,
}

/// Does `labels` match every `key=value` of `selector`?
pub fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

impl Rollout {
    /// A rollout over the nodes of `fleet` (id → labels, online) that match
    /// `selector`, in id order; nodes already on the version are left out by
    /// the caller. Starts wave 0 at `now`.
    pub fn new(
        strategy: Strategy,
        selector: &BTreeMap<String, String>,
        fleet: &BTreeMap<NodeId, (BTreeMap<String, String>, bool)>,
        now: i64,
    ) -> (Rollout, Vec<Action>) {
        let order: Vec<NodeId> = fleet
            .iter()
            .filter(|(_, (labels, _))| selects(selector, labels))
            .map(|(id, _)| id.clone())
            .collect();
        let mut r = Rollout {
            strategy,
            nodes: order
                .iter()
                .map(|n| {
                    (
                        n.clone(),
                        NodeEntry {
                            state: NodeState::Waiting,
                            baseline: None,
                            current: None,
                            shadowing: false,
                            shadow: None,
                        },
                    )
                })
                .collect(),
            online: fleet
                .iter()
                .map(|(id, (_, on))| (id.clone(), *on))
                .collect(),
            order,
            phase: Phase::Rolling {
                wave: 0,
                since: now,
            },
            started: 0,
        };
        let mut actions = Vec::new();
        if r.strategy.shadow_ms > 0 {
            r.phase = Phase::Shadow {
                until: now + r.strategy.shadow_ms,
            };
            actions.push(Action::Phase {
                phase: "shadow".into(),
                detail: format!(
                    "the candidate runs beside the active model on {} targets for {} s",
                    r.order.len(),
                    r.strategy.shadow_ms / 1000
                ),
            });
        } else {
            actions.push(Action::Phase {
                phase: "rolling".into(),
                detail: format!("wave 1 of {}, {} targets", r.waves(), r.order.len()),
            });
        }
        actions.extend(r.step(Input::Tick { now }));
        (r, actions)
    }

    pub fn waves(&self) -> usize {
        self.strategy.waves.len()
    }

    /// Cumulative nodes in waves `0..=wave` (a wave never shrinks the
    /// previous one's size; the last covers every target).
    pub fn wave_size(&self, wave: usize) -> usize {
        if wave + 1 >= self.waves() {
            return self.order.len();
        }
        self.strategy.waves[..=wave]
            .iter()
            .map(|w| w.of(self.order.len()))
            .max()
            .unwrap_or(0)
    }

    pub fn count(&self, f: impl Fn(&NodeState) -> bool) -> usize {
        self.nodes.values().filter(|e| f(&e.state)).count()
    }

    pub fn updated(&self) -> usize {
        self.count(|s| matches!(s, NodeState::Updated { .. }))
    }

    pub fn failed(&self) -> usize {
        self.count(|s| matches!(s, NodeState::Failed { .. }))
    }

    /// Apply one input; the actions to carry out.
    pub fn step(&mut self, input: Input) -> Vec<Action> {
        let mut out = Vec::new();
        match input {
            Input::Tick { now } => self.advance(now, &mut out),
            Input::Online { node, online } => {
                self.online.insert(node, online);
            }
            Input::Updated { node, now } => {
                if let Some(e) = self.nodes.get_mut(&node) {
                    match e.state {
                        NodeState::Updating { .. } => {
                            e.state = NodeState::Updated { at: now };
                            self.advance(now, &mut out);
                        }
                        // Updated after the abort began: take it back too.
                        NodeState::RollingBack => out.push(Action::Rollback { node }),
                        _ => {}
                    }
                }
            }
            Input::UpdateFailed { node, reason } => {
                if let Some(e) = self.nodes.get_mut(&node) {
                    if matches!(e.state, NodeState::Updating { .. } | NodeState::RollingBack) {
                        // The node keeps (or went back to) its previous model.
                        e.state = NodeState::Failed { reason };
                    }
                }
            }
            Input::RolledBack { node } => {
                if let Some(e) = self.nodes.get_mut(&node) {
                    if matches!(e.state, NodeState::RollingBack | NodeState::Updated { .. }) {
                        e.state = NodeState::RolledBack;
                    }
                }
            }
            Input::RollbackFailed { node, reason } => {
                if let Some(e) = self.nodes.get_mut(&node) {
                    if e.state == NodeState::RollingBack {
                        e.state = NodeState::Failed {
                            reason: format!("rollback failed: {reason}"),
                        };
                    }
                }
            }
            Input::Shadow { node, counts } => {
                if let Some(e) = self.nodes.get_mut(&node) {
                    e.shadow = Some(counts);
                }
            }
            Input::Health {
                node,
                baseline,
                current,
            } => {
                if let Some(e) = self.nodes.get_mut(&node) {
                    e.baseline = Some(baseline);
                    e.current = Some(current);
                }
            }
            Input::Pause => {
                if let Phase::Rolling { wave, .. } | Phase::Baking { wave, .. } = self.phase {
                    self.phase = Phase::Paused { wave };
                    out.push(Action::Phase {
                        phase: "paused".into(),
                        detail: format!("in wave {}", wave + 1),
                    });
                }
            }
            Input::Resume { now } => {
                if let Phase::Paused { wave } = self.phase {
                    // The wave starts over its offline wait; a bake starts over.
                    self.phase = Phase::Rolling { wave, since: now };
                    out.push(Action::Phase {
                        phase: "rolling".into(),
                        detail: format!("resumed in wave {}", wave + 1),
                    });
                    self.advance(now, &mut out);
                }
            }
            Input::Abort { reason } => self.abort(reason, &mut out),
        }
        // Reports can trip the failure threshold or complete an abort.
        self.check(&mut out);
        out
    }

    /// Failure threshold, and the end of an abort.
    fn check(&mut self, out: &mut Vec<Action>) {
        if matches!(
            self.phase,
            Phase::Rolling { .. } | Phase::Baking { .. } | Phase::Paused { .. }
        ) && self.failed() > self.strategy.tolerated(self.order.len())
        {
            let reason = format!(
                "{} node(s) failed, more than the threshold of {}",
                self.failed(),
                self.strategy.tolerated(self.order.len())
            );
            self.abort(reason, out);
        }
        if let Phase::Aborting { reason } = &self.phase {
            let pending = self.count(|s| {
                matches!(
                    s,
                    NodeState::RollingBack | NodeState::Updating { .. } | NodeState::Updated { .. }
                )
            });
            if pending == 0 {
                let reason = reason.clone();
                out.push(Action::Phase {
                    phase: "aborted".into(),
                    detail: reason.clone(),
                });
                self.phase = Phase::Aborted { reason };
            }
        }
    }

    fn abort(&mut self, reason: String, out: &mut Vec<Action>) {
        if self.phase.is_terminal() || matches!(self.phase, Phase::Aborting { .. }) {
            return;
        }
        // Aborted in the shadow phase: stop the candidates now (an operator's
        // abort may come long before the phase's end, when they would stop
        // on their own).
        if matches!(self.phase, Phase::Shadow { .. }) {
            for id in &self.order {
                if self.nodes[id].shadowing {
                    out.push(Action::EndShadow { node: id.clone() });
                }
            }
        }
        for id in &self.order {
            let e = self.nodes.get_mut(id).expect("every target has an entry");
            match e.state {
                NodeState::Updated { .. } | NodeState::Updating { .. } => {
                    // An updating node may or may not have swapped: the
                    // rollback command is harmless if it did not.
                    e.state = NodeState::RollingBack;
                    out.push(Action::Rollback { node: id.clone() });
                }
                NodeState::Waiting => {
                    e.state = NodeState::Skipped {
                        reason: "rollout aborted".into(),
                    }
                }
                _ => {}
            }
        }
        out.push(Action::Phase {
            phase: "aborting".into(),
            detail: reason.clone(),
        });
        self.phase = Phase::Aborting { reason };
    }

    /// Every target's shadow counts together.
    pub fn shadow_totals(&self) -> ShadowCounts {
        let mut t = ShadowCounts::default();
        for e in self.nodes.values() {
            if let Some(c) = &e.shadow {
                t.add(c);
            }
        }
        t
    }

    /// The shadow gate: `Ok(summary)` to go on, `Err(reason)` to abort.
    pub fn shadow_verdict(&self) -> Result<String, String> {
        let t = self.shadow_totals();
        let s = &self.strategy;
        if t.turns < s.shadow_min_turns {
            return Err(format!(
                "shadow gate: {} turns compared, fewer than the {} needed to judge",
                t.turns, s.shadow_min_turns
            ));
        }
        let agreement = t.agreement();
        if agreement < s.shadow_min_agreement {
            return Err(format!(
                "shadow gate: the candidate agreed with the active model on {:.1} % of {} turns, below {:.1} %",
                agreement * 100.0,
                t.turns,
                s.shadow_min_agreement * 100.0
            ));
        }
        let (active, candidate) = t.latency_us();
        if candidate > active * (1.0 + s.shadow_latency_margin) {
            return Err(format!(
                "shadow gate: the candidate took {candidate:.0} µs a turn against {active:.0} µs (margin {:.0} %)",
                s.shadow_latency_margin * 100.0
            ));
        }
        Ok(format!(
            "shadow passed: agreement {:.1} % over {} turns, {} out-of-scope disagreements, {candidate:.0} µs against {active:.0} µs a turn",
            agreement * 100.0,
            t.turns,
            t.oos_disagreements
        ))
    }

    /// Health gate over the updated nodes that reported both rates.
    fn health_tripped(&self) -> Option<String> {
        let reported: Vec<(f64, f64)> = self
            .nodes
            .values()
            .filter(|e| matches!(e.state, NodeState::Updated { .. }))
            .filter_map(|e| Some((e.baseline?, e.current?)))
            .collect();
        if reported.is_empty() {
            return None;
        }
        let n = reported.len() as f64;
        let before = reported.iter().map(|r| r.0).sum::<f64>() / n;
        let after = reported.iter().map(|r| r.1).sum::<f64>() / n;
        (after - before > self.strategy.health_margin).then(|| {
            format!(
                "health gate: low-confidence rate rose from {:.3} to {:.3} (margin {:.3})",
                before, after, self.strategy.health_margin
            )
        })
    }

    fn advance(&mut self, now: i64, out: &mut Vec<Action>) {
        loop {
            match self.phase.clone() {
                Phase::Shadow { until } => {
                    if now < until {
                        for id in &self.order {
                            let online = self.online.get(id).copied().unwrap_or(false);
                            let e = self.nodes.get_mut(id).expect("target");
                            if online && !e.shadowing {
                                e.shadowing = true;
                                out.push(Action::Shadow {
                                    node: id.clone(),
                                    until,
                                });
                            }
                        }
                        return;
                    }
                    match self.shadow_verdict() {
                        Ok(summary) => {
                            self.phase = Phase::Rolling {
                                wave: 0,
                                since: now,
                            };
                            out.push(Action::Phase {
                                phase: "rolling".into(),
                                detail: format!("{summary}; wave 1 of {}", self.waves()),
                            });
                        }
                        Err(reason) => {
                            self.abort(reason, out);
                            return;
                        }
                    }
                }
                Phase::Rolling { wave, since } => {
                    let size = self.wave_size(wave);
                    for id in self.order[..size].iter() {
                        let online = self.online.get(id).copied().unwrap_or(false);
                        let e = self.nodes.get_mut(id).expect("target");
                        if e.state != NodeState::Waiting {
                            continue;
                        }
                        if online {
                            e.state = NodeState::Updating { since: now };
                            self.started += 1;
                            out.push(Action::Update { node: id.clone() });
                        } else if now - since >= self.strategy.offline_deadline_ms {
                            e.state = NodeState::Skipped {
                                reason: "offline past the deadline".into(),
                            };
                        }
                    }
                    let open = self.order[..size].iter().any(|id| {
                        matches!(
                            self.nodes[id].state,
                            NodeState::Waiting | NodeState::Updating { .. }
                        )
                    });
                    if open {
                        return;
                    }
                    self.phase = Phase::Baking {
                        wave,
                        until: now + self.strategy.bake_ms,
                    };
                    out.push(Action::Phase {
                        phase: "baking".into(),
                        detail: format!(
                            "wave {} of {} done: {} updated, {} failed",
                            wave + 1,
                            self.waves(),
                            self.updated(),
                            self.failed()
                        ),
                    });
                }
                Phase::Baking { wave, until } => {
                    if let Some(reason) = self.health_tripped() {
                        self.abort(reason, out);
                        return;
                    }
                    if now < until {
                        return;
                    }
                    if wave + 1 >= self.waves() {
                        self.phase = Phase::Succeeded;
                        out.push(Action::Phase {
                            phase: "succeeded".into(),
                            detail: format!(
                                "{} updated, {} failed, {} skipped",
                                self.updated(),
                                self.failed(),
                                self.count(|s| matches!(s, NodeState::Skipped { .. }))
                            ),
                        });
                        return;
                    }
                    self.phase = Phase::Rolling {
                        wave: wave + 1,
                        since: now,
                    };
                    out.push(Action::Phase {
                        phase: "rolling".into(),
                        detail: format!("wave {} of {}", wave + 2, self.waves()),
                    });
                }
                _ => return,
            }
        }
    }
}
