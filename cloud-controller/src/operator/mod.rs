//! The Kubernetes operator (`kubernetes.enabled = true`): the same controller,
//! also driven by custom resources.
//!
//! - `ModelRollout` objects are reconciled into the controller's rollouts:
//!   created once (the id goes to `.status.rolloutId`), paused, resumed and
//!   aborted from `.spec`, their progress copied to `.status` (printer
//!   columns: phase, wave, updated/total, failed), phase changes published
//!   as Events. A finalizer aborts a running rollout (rolling updated nodes
//!   back) before the object goes away.
//! - `EdgeNode` objects mirror the fleet registry, so `kubectl get edgenodes`
//!   shows the fleet.
//! - `ModelTraining` objects start learning-loop training runs and follow
//!   them ([`training`]); with `kubernetes.training_job.image` the trainer
//!   runs as a Job ([`job`]).
//! - Only the holder of the leader Lease acts ([`lease`]); the other replica
//!   waits.

pub mod crd;
pub mod job;
pub mod lease;
pub mod training;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use tokio_util::sync::CancellationToken;

use crate::rollouts::{self, CreateRollout, RolloutError, RolloutView};
pub use crd::{
    EdgeNode, EdgeNodeSpec, EdgeNodeStatus, ModelRollout, ModelRolloutSpec, ModelRolloutStatus,
    ModelTraining, ModelTrainingSpec, ModelTrainingStatus,
};

pub const FINALIZER: &str = "edgedesk.io/rollout";
const MANAGER: &str = "edgedesk-controller";

#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("rollout: {0}")]
    Rollout(#[from] RolloutError),
    /// Not an error: a deletion waits for its rollout to finish aborting.
    #[error("waiting: {0}")]
    Pending(String),
}

/// What a reconcile needs.
pub struct Context {
    pub client: Client,
    pub rollouts: rollouts::Rollouts,
    pub recorder: Recorder,
}

impl Context {
    pub fn new(client: Client, rollouts: rollouts::Rollouts, instance: Option<String>) -> Context {
        Context {
            recorder: recorder(&client, instance),
            client,
            rollouts,
        }
    }
}

/// The Event recorder of this controller (replica `instance`).
fn recorder(client: &Client, instance: Option<String>) -> Recorder {
    let reporter = Reporter {
        controller: MANAGER.into(),
        instance,
    };
    Recorder::new(client.clone(), reporter)
}

/// "rolling" → "Rolling": phases as condition reasons and event actions.
fn title(phase: &str) -> String {
    let mut c = phase.chars();
    c.next()
        .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
        .unwrap_or_default()
}

fn rfc3339_now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Ready / Progressing / Degraded for a rollout in `phase`.
fn rollout_conditions(
    phase: &str,
    message: &str,
    previous: &[crd::Condition],
) -> Vec<crd::Condition> {
    let reason = title(phase);
    let progressing = matches!(phase, "shadow" | "rolling" | "baking");
    let degraded = matches!(phase, "aborting" | "aborted" | "invalid" | "unknown");
    crd::conditions(
        &[
            ("Ready", phase == "succeeded", &reason, message),
            ("Progressing", progressing, &reason, message),
            (
                "Degraded",
                degraded,
                if degraded { &reason } else { "AsExpected" },
                if degraded { message } else { "" },
            ),
        ],
        previous,
        &rfc3339_now(),
    )
}

/// `.status` for a rollout view (conditions keep their transition times
/// from `previous`).
pub fn status_of(
    v: &RolloutView,
    generation: Option<i64>,
    previous: &[crd::Condition],
) -> ModelRolloutStatus {
    ModelRolloutStatus {
        conditions: rollout_conditions(&v.phase, &v.detail, previous),
        rollout_id: Some(v.id.clone()),
        phase: v.phase.clone(),
        wave: format!("{}/{}", v.wave, v.waves),
        progress: format!("{}/{}", v.updated, v.total),
        updated: v.updated as u32,
        total: v.total as u32,
        failed: v.failed as u32,
        skipped: v.skipped as u32,
        rolled_back: v.rolled_back as u32,
        message: v.detail.clone(),
        shadow: v.shadow.as_ref().map(|s| s.summary()),
        observed_generation: generation,
    }
}

/// An Event on `mr`. `action` says what happened in a word ("Rolling",
/// "Aborted"): the recorder folds events with the same reason and action
/// into one, so each phase change needs an action of its own to be kept.
async fn publish(
    ctx: &Context,
    mr: &ModelRollout,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let ev = KubeEvent {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &mr.object_ref(&())).await {
        tracing::warn!(error = %e, "publishing an event failed");
    }
}

async fn patch_status(
    api: &Api<ModelRollout>,
    name: &str,
    status: &ModelRolloutStatus,
) -> Result<(), kube::Error> {
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({ "status": status })),
    )
    .await
    .map(|_| ())
}

/// Bring one ModelRollout and the controller's rollout in line.
pub async fn reconcile(mr: Arc<ModelRollout>, ctx: Arc<Context>) -> Result<Action, OperatorError> {
    if !ctx.rollouts.leader.load(Ordering::SeqCst) {
        return Ok(Action::requeue(Duration::from_secs(5)));
    }
    let ns = mr.namespace().unwrap_or_else(|| "default".into());
    let api: Api<ModelRollout> = Api::namespaced(ctx.client.clone(), &ns);
    let c = ctx.clone();
    finalizer(&api, FINALIZER, mr, |event| async move {
        match event {
            Finalizer::Apply(mr) => apply(&mr, &c).await,
            Finalizer::Cleanup(mr) => cleanup(&mr, &c).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        kube::runtime::finalizer::Error::AddFinalizer(e)
        | kube::runtime::finalizer::Error::RemoveFinalizer(e) => OperatorError::Kube(e),
        other => OperatorError::Kube(kube::Error::Service(other.to_string().into())),
    })
}

async fn apply(mr: &ModelRollout, ctx: &Context) -> Result<Action, OperatorError> {
    let name = mr.name_any();
    let api: Api<ModelRollout> = Api::namespaced(
        ctx.client.clone(),
        &mr.namespace().unwrap_or_else(|| "default".into()),
    );
    let before = mr.status.clone().unwrap_or_default();
    let view = match before.rollout_id.clone() {
        None => {
            let s = &mr.spec;
            let req = CreateRollout {
                model: s.model.clone(),
                selector: s.selector.clone(),
                waves: s.waves.clone(),
                bake_secs: s.bake_secs,
                failure_threshold: s.failure_threshold.clone(),
                health_margin: s.health_margin,
                offline_deadline_secs: s.offline_deadline_secs,
                shadow_secs: s.shadow_secs,
                shadow_min_agreement: s.shadow_min_agreement,
                shadow_latency_margin: s.shadow_latency_margin,
                shadow_min_turns: s.shadow_min_turns,
            };
            match ctx.rollouts.create(req).await {
                Ok(v) => {
                    publish(
                        ctx,
                        mr,
                        EventType::Normal,
                        "Created",
                        &title(&v.phase),
                        format!("rollout {} of {} to {} node(s)", v.id, v.version, v.total),
                    )
                    .await;
                    v
                }
                Err(e @ (RolloutError::Invalid(_) | RolloutError::NoModel(_))) => {
                    // The spec cannot work as written: say so and wait for an edit.
                    let status = ModelRolloutStatus {
                        phase: "invalid".into(),
                        message: e.to_string(),
                        conditions: rollout_conditions(
                            "invalid",
                            &e.to_string(),
                            &before.conditions,
                        ),
                        observed_generation: mr.metadata.generation,
                        ..Default::default()
                    };
                    patch_status(&api, &name, &status).await?;
                    publish(
                        ctx,
                        mr,
                        EventType::Warning,
                        "Invalid",
                        "Validate",
                        e.to_string(),
                    )
                    .await;
                    return Ok(Action::await_change());
                }
                Err(e) => return Err(e.into()),
            }
        }
        Some(id) => {
            let Some(mut v) = ctx.rollouts.get(&id).await.map_err(RolloutError::from)? else {
                // Another controller's store (a replica with its own): say so
                // once and wait for a change instead of retrying forever.
                if before.phase != "unknown" {
                    let message = format!(
                        "rollout {id} is not in this controller's store; replicas must share one store"
                    );
                    let status = ModelRolloutStatus {
                        phase: "unknown".into(),
                        conditions: rollout_conditions("unknown", &message, &before.conditions),
                        message: message.clone(),
                        ..before.clone()
                    };
                    patch_status(&api, &name, &status).await?;
                    publish(
                        ctx,
                        mr,
                        EventType::Warning,
                        "UnknownRollout",
                        "Lookup",
                        message,
                    )
                    .await;
                }
                return Ok(Action::await_change());
            };
            let terminal = v.phase == "succeeded" || v.phase == "aborted";
            let op = if terminal {
                None
            } else if mr.spec.abort && v.phase != "aborting" {
                Some("abort")
            } else if mr.spec.paused && v.phase != "paused" && v.phase != "aborting" {
                Some("pause")
            } else if !mr.spec.paused && v.phase == "paused" {
                Some("resume")
            } else {
                None
            };
            if let Some(op) = op {
                v = ctx.rollouts.operate(&id, op).await?;
                publish(
                    ctx,
                    mr,
                    EventType::Normal,
                    "Operated",
                    &title(op),
                    format!("{op} requested in the spec"),
                )
                .await;
            }
            v
        }
    };
    let status = status_of(&view, mr.metadata.generation, &before.conditions);
    if status != before {
        patch_status(&api, &name, &status).await?;
        if status.phase != before.phase && before.rollout_id.is_some() {
            let kind = if status.phase == "aborting" || status.phase == "aborted" {
                EventType::Warning
            } else {
                EventType::Normal
            };
            let note = if status.message.is_empty() {
                format!(
                    "{} → {} ({} updated of {})",
                    before.phase, status.phase, status.updated, status.total
                )
            } else {
                format!("{} → {}: {}", before.phase, status.phase, status.message)
            };
            publish(ctx, mr, kind, "PhaseChanged", &title(&status.phase), note).await;
        }
    }
    Ok(if view.phase == "succeeded" || view.phase == "aborted" {
        Action::await_change()
    } else {
        Action::requeue(Duration::from_secs(2))
    })
}

/// The ModelRollout is being deleted: abort its rollout and keep the
/// finalizer until the abort has finished (every updated node rolled back
/// or reported failed). A rollout this controller's store does not know is
/// not assumed gone: the finalizer stays, with a Warning saying why.
async fn cleanup(mr: &ModelRollout, ctx: &Context) -> Result<Action, OperatorError> {
    let Some(id) = mr.status.as_ref().and_then(|s| s.rollout_id.clone()) else {
        return Ok(Action::await_change());
    };
    let view = match ctx.rollouts.get(&id).await.map_err(RolloutError::from)? {
        Some(v) => v,
        None => {
            let message = format!(
                "rollout {id} is not in this controller's store: not removing the finalizer (remove it by hand once the rollout is known to be over)"
            );
            publish(
                ctx,
                mr,
                EventType::Warning,
                "UnknownRollout",
                "Finalize",
                message,
            )
            .await;
            return Err(OperatorError::Pending(format!("rollout {id} unknown")));
        }
    };
    match view.phase.as_str() {
        "succeeded" | "aborted" => Ok(Action::await_change()),
        "aborting" => Err(OperatorError::Pending(format!(
            "rollout {id} still rolling back"
        ))),
        _ => {
            ctx.rollouts.operate(&id, "abort").await?;
            publish(
                ctx,
                mr,
                EventType::Warning,
                "Aborted",
                "Abort",
                format!("rollout {id} aborted: the ModelRollout was deleted; the finalizer goes once every node is back"),
            )
            .await;
            // Finished at once if nothing was updated; else wait.
            match ctx.rollouts.get(&id).await.map_err(RolloutError::from)? {
                Some(v) if v.phase == "aborted" => Ok(Action::await_change()),
                _ => Err(OperatorError::Pending(format!("rollout {id} rolling back"))),
            }
        }
    }
}

fn error_policy(_mr: Arc<ModelRollout>, e: &OperatorError, _ctx: Arc<Context>) -> Action {
    if let OperatorError::Pending(what) = e {
        tracing::debug!(%what, "ModelRollout deletion waits");
        return Action::requeue(Duration::from_secs(2));
    }
    tracing::warn!(error = %e, "ModelRollout reconcile failed; retrying");
    Action::requeue(Duration::from_secs(10))
}

/// A Kubernetes object name for a node id, if it can be one (DNS-1123).
pub fn object_name(node_id: &str) -> Option<String> {
    let n = node_id.to_ascii_lowercase().replace('_', "-");
    let ok = !n.is_empty()
        && n.len() <= 253
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && n.as_bytes()[0].is_ascii_alphanumeric()
        && n.as_bytes()[n.len() - 1].is_ascii_alphanumeric();
    ok.then_some(n)
}

/// One pass of the EdgeNode mirror: apply every registry node, take each
/// object's `spec.branch` to the node (checked, kept, queued). An EdgeNode
/// whose node this controller's registry does not know is left alone (a
/// warning is logged): a replica must never delete what it does not know.
pub async fn mirror_nodes(
    client: &Client,
    namespace: &str,
    rollouts: &rollouts::Rollouts,
) -> Result<(), OperatorError> {
    let store = &rollouts.store;
    let api: Api<EdgeNode> = Api::namespaced(client.clone(), namespace);
    let lp = ListParams::default().labels(&format!("app.kubernetes.io/managed-by={MANAGER}"));
    let existing = api.list(&lp).await?;
    let wanted: std::collections::BTreeMap<String, serde_json::Value> = existing
        .iter()
        .filter_map(|o| Some((o.name_any(), o.spec.branch.clone()?)))
        .collect();
    let previous: std::collections::BTreeMap<String, Vec<crd::Condition>> = existing
        .iter()
        .map(|o| {
            let c = o
                .status
                .as_ref()
                .map(|s| s.conditions.clone())
                .unwrap_or_default();
            (o.name_any(), c)
        })
        .collect();
    let nodes = store.nodes().await.map_err(RolloutError::from)?;
    let pp = PatchParams::apply(MANAGER).force();
    let mut names = std::collections::BTreeSet::new();
    for n in &nodes {
        let Some(name) = object_name(&n.id) else {
            tracing::warn!(node = %n.id, "node id is not a valid Kubernetes name; not mirrored");
            continue;
        };
        names.insert(name.clone());
        let mut obj = EdgeNode::new(
            &name,
            EdgeNodeSpec {
                node_id: n.id.clone(),
                labels: n.labels.clone(),
                branch: None,
            },
        );
        obj.metadata.labels = Some(
            [(
                "app.kubernetes.io/managed-by".to_string(),
                MANAGER.to_string(),
            )]
            .into(),
        );
        api.patch(&name, &pp, &Patch::Apply(&obj)).await?;
        let branch = match wanted.get(&name) {
            Some(spec) => Some(branch_from_spec(rollouts, &n.id, spec).await),
            None => None,
        };
        let hb = n.heartbeat.clone().unwrap_or_default();
        let revoked = n.revoked_at.is_some();
        let (ready, ready_reason) = match (revoked, n.online) {
            (true, _) => (false, "Revoked"),
            (false, true) => (true, "Online"),
            (false, false) => (false, "Offline"),
        };
        let branch_trouble = branch
            .as_deref()
            .filter(|b| b.starts_with("refused") || b.starts_with("invalid"));
        let (degraded, degraded_reason, degraded_message) = match (revoked, branch_trouble) {
            (true, _) => (true, "Revoked", ""),
            (false, Some(b)) if b.starts_with("refused") => (true, "BranchRefused", b),
            (false, Some(b)) => (true, "BranchInvalid", b),
            (false, None) => (false, "AsExpected", ""),
        };
        let conditions = crd::conditions(
            &[
                ("Ready", ready, ready_reason, ""),
                ("Degraded", degraded, degraded_reason, degraded_message),
            ],
            previous.get(&name).map(Vec::as_slice).unwrap_or_default(),
            &rfc3339_now(),
        );
        let status = EdgeNodeStatus {
            online: n.online,
            model_version: hb.model_version,
            sw_version: hb.sw_version,
            last_seen: n
                .last_seen
                .and_then(chrono::DateTime::from_timestamp_millis)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            revoked,
            branch,
            conditions,
        };
        api.patch_status(
            &name,
            &pp,
            &Patch::Apply(serde_json::json!({
                "apiVersion": "edgedesk.io/v1alpha1", "kind": "EdgeNode", "status": status
            })),
        )
        .await?;
    }
    for o in existing {
        let name = o.name_any();
        if !names.contains(&name) {
            tracing::warn!(edgenode = %name, "EdgeNode of a node this controller's registry does not know; left alone");
        }
    }
    Ok(())
}

/// Take an EdgeNode's `spec.branch` to its node through the same path as
/// the REST API; the word for `status.branch`.
async fn branch_from_spec(
    rollouts: &rollouts::Rollouts,
    node: &str,
    spec: &serde_json::Value,
) -> String {
    let info: edgedesk_common::branch::BranchInfo = match serde_json::from_value(spec.clone()) {
        Ok(i) => i,
        Err(e) => return format!("invalid: spec.branch: {e}"),
    };
    match crate::branches::set(
        &rollouts.store,
        &rollouts.downlink,
        node,
        info,
        "kubernetes",
    )
    .await
    {
        Ok(row) => match row.delivery() {
            "refused" => format!("refused: {}", row.detail.unwrap_or_default()),
            word => word.to_owned(),
        },
        Err(crate::branches::SetBranchError::Store(e)) => {
            tracing::warn!(node, error = %e, "keeping an EdgeNode's branch failed; next pass retries");
            "pending".into()
        }
        Err(e) => format!("invalid: {e}"),
    }
}

/// Run the operator until `shutdown`: leader election, the ModelRollout
/// controller and the EdgeNode mirror.
/// The namespace the operator works in: `kubernetes.namespace`, else the
/// client's default (the pod's own).
pub fn namespace(client: &Client, cfg: &crate::config::KubernetesConfig) -> String {
    if cfg.namespace.is_empty() {
        client.default_namespace().to_owned()
    } else {
        cfg.namespace.clone()
    }
}

pub async fn run(
    client: Client,
    cfg: crate::config::KubernetesConfig,
    rollouts: rollouts::Rollouts,
    trainings: crate::training::Trainings,
    shutdown: CancellationToken,
) {
    let namespace = namespace(&client, &cfg);
    let identity = if cfg.identity.is_empty() {
        std::env::var("POD_NAME").unwrap_or_else(|_| format!("controller-{}", std::process::id()))
    } else {
        cfg.identity.clone()
    };
    tracing::info!(%namespace, %identity, "Kubernetes operator starting");
    let lease = tokio::spawn(lease::run(
        client.clone(),
        namespace.clone(),
        cfg.lease_name.clone(),
        identity.clone(),
        Duration::from_secs(cfg.lease_seconds),
        rollouts.leader.clone(),
        shutdown.clone(),
    ));
    let mirror = {
        let (client, rollouts, shutdown, ns) = (
            client.clone(),
            rollouts.clone(),
            shutdown.clone(),
            namespace.clone(),
        );
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(cfg.mirror_secs.max(1)));
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = every.tick() => {
                        if rollouts.leader.load(Ordering::SeqCst) {
                            if let Err(e) = mirror_nodes(&client, &ns, &rollouts).await {
                                tracing::warn!(error = %e, "EdgeNode mirror pass failed");
                            }
                        }
                    }
                }
            }
        })
    };
    let trainings_ctx = Arc::new(training::TrainingContext::new(
        client.clone(),
        trainings,
        Some(identity.clone()),
    ));
    let ctx = Arc::new(Context::new(client.clone(), rollouts, Some(identity)));
    let token = shutdown.clone();
    let trained = Controller::new(
        Api::<ModelTraining>::namespaced(client.clone(), &namespace),
        watcher::Config::default(),
    )
    .graceful_shutdown_on(async move { token.cancelled().await })
    .run(training::reconcile, training::error_policy, trainings_ctx)
    .for_each(|r| async move {
        if let Err(e) = r {
            tracing::debug!(error = %e, "ModelTraining reconcile");
        }
    });
    let api: Api<ModelRollout> = Api::namespaced(client, &namespace);
    let token = shutdown.clone();
    let rolled = Controller::new(api, watcher::Config::default())
        .graceful_shutdown_on(async move { token.cancelled().await })
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "reconcile");
            }
        });
    tokio::join!(trained, rolled);
    let _ = mirror.await;
    let _ = lease.await;
}
