//! `ModelTraining` objects reconciled into the learning loop's training
//! runs: a new object starts a run (waiting while another one goes; the
//! trainer runs as a Job when `kubernetes.training_job.image` is set), its
//! state and figures' verdict are copied to `.status` with conditions,
//! each state change is an Event, and `spec.approve` rolls the model out
//! once it passed the gate. Deleting the object leaves the run's record
//! (and any release it published) in the controller.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder};
use kube::{Client, Resource, ResourceExt};

use super::crd::{self, ModelTraining, ModelTrainingStatus};
use super::{OperatorError, rfc3339_now};
use crate::store::trainings::{TrainingRow, TrainingState};
use crate::training::{StartTraining, TrainingError, Trainings};

/// What a ModelTraining reconcile needs.
pub struct TrainingContext {
    pub client: Client,
    pub trainings: Trainings,
    pub recorder: Recorder,
}

impl TrainingContext {
    pub fn new(client: Client, trainings: Trainings, instance: Option<String>) -> TrainingContext {
        TrainingContext {
            recorder: super::recorder(&client, instance),
            client,
            trainings,
        }
    }
}

/// "awaiting_approval" → "AwaitingApproval" (reasons and event actions).
fn camel(state: &str) -> String {
    state
        .split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// `.status` for a state, keeping transition times from `previous`.
pub fn status_for(
    state: &str,
    row: Option<&TrainingRow>,
    message: &str,
    previous: &ModelTrainingStatus,
    generation: Option<i64>,
) -> ModelTrainingStatus {
    let reason = camel(state);
    let ready = matches!(state, "awaiting_approval" | "promoted");
    let progressing = matches!(state, "waiting" | "running");
    let degraded = matches!(state, "refused" | "failed" | "unknown");
    let conditions = crd::conditions(
        &[
            ("Ready", ready, &reason, message),
            ("Progressing", progressing, &reason, message),
            (
                "Degraded",
                degraded,
                if degraded { &reason } else { "AsExpected" },
                if degraded { message } else { "" },
            ),
        ],
        &previous.conditions,
        &rfc3339_now(),
    );
    ModelTrainingStatus {
        training_id: row
            .map(|r| r.id.clone())
            .or_else(|| previous.training_id.clone()),
        state: state.to_owned(),
        version: row.map(|r| r.version.clone()).unwrap_or_default(),
        baseline_version: row.map(|r| r.baseline_version.clone()).unwrap_or_default(),
        model_id: row.and_then(|r| r.model_id.clone()),
        rollout_id: row.and_then(|r| r.rollout_id.clone()),
        message: message.to_owned(),
        conditions,
        observed_generation: generation,
    }
}

/// What a run's record says, in words for `.status.message`.
fn message_of(row: &TrainingRow) -> String {
    match row.state {
        TrainingState::Running => format!(
            "training {} from {} on {} labels ({} held out)",
            row.version, row.baseline_version, row.trained_labels, row.held_out_labels
        ),
        TrainingState::AwaitingApproval => format!(
            "{} passed the gate and is published; set spec.approve to roll it out",
            row.version
        ),
        TrainingState::Promoted => format!(
            "{} approved; rollout {}",
            row.version,
            row.rollout_id.clone().unwrap_or_default()
        ),
        TrainingState::Refused | TrainingState::Failed => row.detail.clone(),
    }
}

/// Bring one ModelTraining and the controller's run in line.
pub async fn reconcile(
    mt: Arc<ModelTraining>,
    ctx: Arc<TrainingContext>,
) -> Result<Action, OperatorError> {
    if !ctx.trainings.rollouts.leader.load(Ordering::SeqCst) {
        return Ok(Action::requeue(Duration::from_secs(5)));
    }
    let ns = mt.namespace().unwrap_or_else(|| "default".into());
    let api: Api<ModelTraining> = Api::namespaced(ctx.client.clone(), &ns);
    let name = mt.name_any();
    let by = format!("kubernetes:{ns}/{name}");
    let before = mt.status.clone().unwrap_or_default();
    let generation = mt.metadata.generation;
    // A run this object started whose id did not reach `.status` (the
    // status write failed) is adopted, not started twice.
    let mut known = before.training_id.clone();
    if known.is_none() {
        let since = mt
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_millisecond())
            .unwrap_or(0);
        known = ctx
            .trainings
            .store
            .trainings(100)
            .await
            .map_err(|e| OperatorError::Pending(e.to_string()))?
            .into_iter()
            .find(|t| t.requested_by == by && t.created_at >= since)
            .map(|t| t.id);
    }
    let (status, again) = match known {
        None => {
            let req = StartTraining {
                baseline: mt.spec.baseline.clone(),
            };
            match ctx.trainings.start(req, &by).await {
                Ok(row) => (
                    status_for(
                        "running",
                        Some(&row),
                        &message_of(&row),
                        &before,
                        generation,
                    ),
                    Some(Duration::from_secs(10)),
                ),
                Err(TrainingError::Busy(other)) => (
                    status_for(
                        "waiting",
                        None,
                        &format!(
                            "another training run is going ({other}); this one starts after it"
                        ),
                        &before,
                        generation,
                    ),
                    Some(Duration::from_secs(30)),
                ),
                Err(TrainingError::Store(e)) => return Err(OperatorError::Pending(e.to_string())),
                Err(e) => (
                    status_for("failed", None, &e.to_string(), &before, generation),
                    None,
                ),
            }
        }
        Some(id) => match ctx.trainings.store.training(&id).await {
            Err(e) => return Err(OperatorError::Pending(e.to_string())),
            Ok(None) => (
                status_for(
                    "unknown",
                    None,
                    &format!("training run {id} is not in this controller's store"),
                    &before,
                    generation,
                ),
                None,
            ),
            Ok(Some(mut row)) => {
                if mt.spec.approve && row.state == TrainingState::AwaitingApproval {
                    let settings = mt.spec.rollout.clone().unwrap_or(serde_json::Value::Null);
                    match ctx.trainings.approve(&id, settings, &by).await {
                        Ok(r) => row = r,
                        Err(e) => {
                            let st = status_for(
                                row.state.as_str(),
                                Some(&row),
                                &format!("approval refused: {e}"),
                                &before,
                                generation,
                            );
                            finish(&ctx, &api, &mt, &before, &st).await?;
                            return Ok(Action::await_change());
                        }
                    }
                }
                let again = (row.state == TrainingState::Running).then(|| Duration::from_secs(10));
                (
                    status_for(
                        row.state.as_str(),
                        Some(&row),
                        &message_of(&row),
                        &before,
                        generation,
                    ),
                    again,
                )
            }
        },
    };
    finish(&ctx, &api, &mt, &before, &status).await?;
    Ok(again.map_or_else(Action::await_change, Action::requeue))
}

/// Write `status` if it changed, with an Event when the state did.
async fn finish(
    ctx: &TrainingContext,
    api: &Api<ModelTraining>,
    mt: &ModelTraining,
    before: &ModelTrainingStatus,
    status: &ModelTrainingStatus,
) -> Result<(), OperatorError> {
    if status.state != before.state {
        let warn = matches!(status.state.as_str(), "refused" | "failed" | "unknown");
        let ev = KubeEvent {
            type_: if warn {
                EventType::Warning
            } else {
                EventType::Normal
            },
            // The state in the reason: the recorder folds events alike in
            // reason and action whatever their notes say.
            reason: camel(&status.state),
            note: Some(status.message.chars().take(1000).collect()),
            action: camel(&status.state),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&ev, &mt.object_ref(&())).await {
            tracing::warn!(error = %e, "publishing an event failed");
        }
    }
    if status != before {
        api.patch_status(
            &mt.name_any(),
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "status": status })),
        )
        .await?;
    }
    Ok(())
}

pub fn error_policy(
    _mt: Arc<ModelTraining>,
    e: &OperatorError,
    _ctx: Arc<TrainingContext>,
) -> Action {
    tracing::warn!(error = %e, "ModelTraining reconcile failed; retrying");
    Action::requeue(Duration::from_secs(15))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_become_conditions_that_keep_their_transition_times() {
        let running = status_for("running", None, "training", &Default::default(), Some(1));
        let ready = |s: &ModelTrainingStatus, t: &str| {
            s.conditions
                .iter()
                .find(|c| c.type_ == t)
                .map(|c| c.status.clone())
                .unwrap()
        };
        assert_eq!(ready(&running, "Progressing"), "True");
        assert_eq!(ready(&running, "Ready"), "False");
        let refused = status_for("refused", None, "English fell 0.05", &running, Some(1));
        assert_eq!(ready(&refused, "Degraded"), "True");
        assert_eq!(refused.conditions[2].reason, "Refused");
        let passed = status_for("awaiting_approval", None, "ok", &running, Some(1));
        assert_eq!(ready(&passed, "Ready"), "True");
        assert_eq!(passed.conditions[0].reason, "AwaitingApproval");
    }
}
