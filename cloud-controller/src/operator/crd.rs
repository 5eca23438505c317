//! The custom resources of the operator, in the `edgedesk.io` API group.
//! Their YAML is generated from these types (`cloud-controller crd`); the
//! chart's copy is checked against it in CI.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "edgedesk.io";

/// A model rollout, driven by the controller's rollout engine.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "edgedesk.io",
    version = "v1alpha1",
    kind = "ModelRollout",
    namespaced,
    status = "ModelRolloutStatus",
    shortname = "mro",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Wave","type":"string","jsonPath":".status.wave"}"#,
    printcolumn = r#"{"name":"Updated","type":"string","jsonPath":".status.progress"}"#,
    printcolumn = r#"{"name":"Failed","type":"integer","jsonPath":".status.failed"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ModelRolloutSpec {
    /// Published release: id, name@version or version.
    pub model: String,
    /// Node labels that must all match (empty: every node).
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    /// Cumulative wave sizes, e.g. ["1", "10%", "50%", "100%"].
    #[serde(default)]
    pub waves: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bake_secs: Option<u64>,
    /// Failed nodes tolerated: "0", "3" or "5%".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_margin: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offline_deadline_secs: Option<u64>,
    /// Run the candidate in shadow on every target this long before the
    /// first wave; the shadow gate then decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow_secs: Option<u64>,
    /// Shadow gate: share of turns the candidate must agree on (default 0.9).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow_min_agreement: Option<f64>,
    /// Shadow gate: how much slower per turn the candidate may be (default 0.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow_latency_margin: Option<f64>,
    /// Shadow gate: fewest turns compared to judge (default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow_min_turns: Option<u64>,
    /// Hold the rollout (no new nodes are started).
    #[serde(default)]
    pub paused: bool,
    /// Abort and roll updated nodes back.
    #[serde(default)]
    pub abort: bool,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelRolloutStatus {
    /// The controller's rollout id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_id: Option<String>,
    /// shadow, rolling, baking, paused, aborting, succeeded, aborted, or invalid.
    pub phase: String,
    /// "current/total" waves.
    pub wave: String,
    /// "updated/targets".
    pub progress: String,
    pub updated: u32,
    pub total: u32,
    pub failed: u32,
    pub skipped: u32,
    pub rolled_back: u32,
    #[serde(default)]
    pub message: String,
    /// The shadow phase so far: "agreement 97.2 % over 480 turns, 3 out of
    /// scope, 310 µs vs 290 µs a turn".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<String>,
    /// Ready (succeeded), Progressing (shadow, rolling, baking), Degraded
    /// (aborting, aborted, invalid, unknown to this controller).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// A status condition, as Kubernetes tools read them (`kubectl wait
/// --for=condition=Ready`).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// "True", "False" or "Unknown".
    pub status: String,
    pub reason: String,
    #[serde(default)]
    pub message: String,
    /// RFC 3339: when `status` last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
}

/// Conditions `(type, true?, reason, message)`, keeping each one's
/// transition time from `previous` when its status did not change.
pub fn conditions(
    wanted: &[(&str, bool, &str, &str)],
    previous: &[Condition],
    now: &str,
) -> Vec<Condition> {
    wanted
        .iter()
        .map(|(type_, on, reason, message)| {
            let status = if *on { "True" } else { "False" };
            let since = previous
                .iter()
                .find(|c| c.type_ == *type_ && c.status == status)
                .and_then(|c| c.last_transition_time.clone())
                .unwrap_or_else(|| now.to_owned());
            Condition {
                type_: (*type_).to_owned(),
                status: status.to_owned(),
                reason: (*reason).to_owned(),
                message: (*message).to_owned(),
                last_transition_time: Some(since),
            }
        })
        .collect()
}

/// A node of the fleet, mirrored from the controller's registry (read-only:
/// the registry is the source of truth; edits are overwritten).
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "edgedesk.io",
    version = "v1alpha1",
    kind = "EdgeNode",
    namespaced,
    status = "EdgeNodeStatus",
    shortname = "en",
    printcolumn = r#"{"name":"Online","type":"boolean","jsonPath":".status.online"}"#,
    printcolumn = r#"{"name":"Model","type":"string","jsonPath":".status.modelVersion"}"#,
    printcolumn = r#"{"name":"Region","type":"string","jsonPath":".spec.labels.region"}"#,
    printcolumn = r#"{"name":"Branch","type":"string","jsonPath":".status.branch"}"#,
    printcolumn = r#"{"name":"Last Seen","type":"date","jsonPath":".status.lastSeen"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct EdgeNodeSpec {
    /// The node id in the registry.
    pub node_id: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The branch's hours, holidays and facts, as in the node's `[branch]`
    /// settings (`hours`, `holidays`, `facts`). Written by operators (the
    /// mirror never sets it); the controller checks it, keeps it and sends
    /// it to the node. `status.branch` says how that went.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub branch: Option<serde_json::Value>,
}

/// An object the API server keeps as written (checked by the controller).
fn any_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EdgeNodeStatus {
    pub online: bool,
    #[serde(default)]
    pub model_version: String,
    #[serde(default)]
    pub sw_version: String,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<String>,
    pub revoked: bool,
    /// `spec.branch`: "applied", "pending" (the node has not taken it yet),
    /// "refused: …" (by the node) or "invalid: …" (not sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// Ready (online, not revoked) and Degraded (revoked, or its branch
    /// settings refused or invalid).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// A learning-loop training run: the labels people gave plus the base data,
/// trained (as a Job when `kubernetes.training_job.image` is set), checked
/// by the regression gate against the fleet's model and published; rolled
/// out once `spec.approve` is set (or at once with auto-promotion).
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "edgedesk.io",
    version = "v1alpha1",
    kind = "ModelTraining",
    namespaced,
    status = "ModelTrainingStatus",
    shortname = "mtr",
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"Version","type":"string","jsonPath":".status.version"}"#,
    printcolumn = r#"{"name":"Baseline","type":"string","jsonPath":".status.baselineVersion"}"#,
    printcolumn = r#"{"name":"Rollout","type":"string","jsonPath":".status.rolloutId"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ModelTrainingSpec {
    /// Release to compare with (id, name@version or version). Default: the
    /// model of the newest successful rollout, else the newest release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<String>,
    /// Roll the model out once it passed the gate (a supervisor's approval).
    #[serde(default)]
    pub approve: bool,
    /// Rollout settings for the approval, over the configured ones
    /// (`waves`, `shadow_secs`, `bake_secs`, …), as `POST /api/v1/rollouts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub rollout: Option<serde_json::Value>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelTrainingStatus {
    /// The controller's training run id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training_id: Option<String>,
    /// waiting (another run is going), running, awaiting_approval,
    /// promoted, refused, failed, or unknown (not in this controller's store).
    pub state: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub baseline_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_id: Option<String>,
    /// Why it was refused or failed; what it waits for.
    #[serde(default)]
    pub message: String,
    /// Ready (passed the gate: awaiting approval or promoted), Progressing
    /// (waiting, running), Degraded (refused, failed, unknown).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Every CRD as one YAML stream (what `cloud-controller crd` prints).
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    let mut out = String::new();
    for crd in [ModelRollout::crd(), EdgeNode::crd(), ModelTraining::crd()] {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd).expect("a CRD serialises"));
    }
    out
}
