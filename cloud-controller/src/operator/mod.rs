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
//! - Only the holder of the leader Lease acts ([`lease`]); the other replica
//!   waits.

pub mod crd;
pub mod lease;

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
};

pub const FINALIZER: &str = "edgedesk.io/rollout";
const MANAGER: &str = "edgedesk-controller";

#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("rollout: {0}")]
    Rollout(#[from] RolloutError),
}

/// What a reconcile needs.
pub struct Context {
    pub client: Client,
    pub rollouts: rollouts::Rollouts,
    pub recorder: Recorder,
}

impl Context {
    pub fn new(client: Client, rollouts: rollouts::Rollouts, instance: Option<String>) -> Context {
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance,
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            rollouts,
        }
    }
}

/// `.status` for a rollout view.
pub fn status_of(v: &RolloutView, generation: Option<i64>) -> ModelRolloutStatus {
    ModelRolloutStatus {
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

async fn publish(ctx: &Context, mr: &ModelRollout, type_: EventType, reason: &str, note: String) {
    let ev = KubeEvent {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Reconcile".into(),
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
                        observed_generation: mr.metadata.generation,
                        ..Default::default()
                    };
                    patch_status(&api, &name, &status).await?;
                    publish(ctx, mr, EventType::Warning, "Invalid", e.to_string()).await;
                    return Ok(Action::await_change());
                }
                Err(e) => return Err(e.into()),
            }
        }
        Some(id) => {
            let mut v = ctx
                .rollouts
                .get(&id)
                .await
                .map_err(RolloutError::from)?
                .ok_or(RolloutError::NotFound(id.clone()))?;
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
                    format!("{op} requested in the spec"),
                )
                .await;
            }
            v
        }
    };
    let status = status_of(&view, mr.metadata.generation);
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
            publish(ctx, mr, kind, "PhaseChanged", note).await;
        }
    }
    Ok(if view.phase == "succeeded" || view.phase == "aborted" {
        Action::await_change()
    } else {
        Action::requeue(Duration::from_secs(2))
    })
}

async fn cleanup(mr: &ModelRollout, ctx: &Context) -> Result<Action, OperatorError> {
    if let Some(id) = mr.status.as_ref().and_then(|s| s.rollout_id.clone()) {
        match ctx.rollouts.operate(&id, "abort").await {
            Ok(_) => {
                publish(
                    ctx,
                    mr,
                    EventType::Warning,
                    "Aborted",
                    format!("rollout {id} aborted: the ModelRollout was deleted"),
                )
                .await;
            }
            Err(RolloutError::Finished(..)) | Err(RolloutError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Action::await_change())
}

fn error_policy(_mr: Arc<ModelRollout>, e: &OperatorError, _ctx: Arc<Context>) -> Action {
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
/// object's `spec.branch` to the node (checked, kept, queued), delete
/// mirrors of nodes that left the registry.
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
        let status = EdgeNodeStatus {
            online: n.online,
            model_version: hb.model_version,
            sw_version: hb.sw_version,
            last_seen: n
                .last_seen
                .and_then(chrono::DateTime::from_timestamp_millis)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            revoked: n.revoked_at.is_some(),
            branch,
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
            api.delete(&name, &Default::default()).await?;
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
pub async fn run(
    client: Client,
    cfg: crate::config::KubernetesConfig,
    rollouts: rollouts::Rollouts,
    shutdown: CancellationToken,
) {
    let namespace = if cfg.namespace.is_empty() {
        client.default_namespace().to_owned()
    } else {
        cfg.namespace.clone()
    };
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
    let ctx = Arc::new(Context::new(client.clone(), rollouts, Some(identity)));
    let api: Api<ModelRollout> = Api::namespaced(client, &namespace);
    let token = shutdown.clone();
    Controller::new(api, watcher::Config::default())
        .graceful_shutdown_on(async move { token.cancelled().await })
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "reconcile");
            }
        })
        .await;
    let _ = mirror.await;
    let _ = lease.await;
}
