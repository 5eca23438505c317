//! Knowledge-base releases: the answers (and quick replies) supervisors
//! write in the console reach the fleet without a training run, on the
//! same signed path as models. A release is the fleet's model (the one
//! most nodes report serving) unchanged
//! with the current answers in its `answers.toml` and the next patch
//! version (2.0.0 → 2.0.1): published (signed), recorded as a run of kind
//! `knowledge_base` with the diff against the fleet's answers, and rolled
//! out on approval like a trained model (shadow, waves, the health gate;
//! aborting a rollout rolls the nodes back). On the node the released
//! answer replaces the built-in one for its intent; a branch that changed
//! that answer in its own knowledge base keeps its own.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;

use edgedesk_common::bundle::MANIFEST_FILE;
use edgedesk_dialog::kb::{MODEL_ANSWERS_FILE, ModelAnswers};
use serde::Serialize;

use super::{Busy, TrainingError, Trainings, blocking, dataset, materialise, ship_answers};
use crate::downlink::now_ms;
use crate::store::trainings::{IntentAnswer, TrainingRow, TrainingState};

/// One intent's answer before and after a release.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct AnswerChange {
    pub intent: String,
    /// added, changed or removed.
    pub change: String,
    pub before: Option<ReleasedAnswer>,
    pub after: Option<ReleasedAnswer>,
}

/// An answer as a release carries it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ReleasedAnswer {
    pub en: String,
    pub zh: String,
    pub quick_en: Vec<String>,
    pub quick_zh: Vec<String>,
}

fn released(a: &edgedesk_dialog::kb::Answer) -> ReleasedAnswer {
    ReleasedAnswer {
        en: a.en.clone(),
        zh: a.zh.clone(),
        quick_en: a.quick_replies.en.clone(),
        quick_zh: a.quick_replies.zh.clone(),
    }
}

/// What changes from `before` (the fleet model's answers) to `after`,
/// by intent (pure).
pub fn diff(before: &ModelAnswers, after: &ModelAnswers) -> Vec<AnswerChange> {
    let mut intents: Vec<&String> = before.0.keys().chain(after.0.keys()).collect();
    intents.sort();
    intents.dedup();
    intents
        .into_iter()
        .filter_map(|i| {
            let (b, a) = (before.0.get(i).map(released), after.0.get(i).map(released));
            let change = match (&b, &a) {
                (None, Some(_)) => "added",
                (Some(_), None) => "removed",
                (Some(x), Some(y)) if x != y => "changed",
                _ => return None,
            };
            Some(AnswerChange {
                intent: i.clone(),
                change: change.into(),
                before: b,
                after: a,
            })
        })
        .collect()
}

/// The answers a bundle folder carries (none without `answers.toml`).
fn answers_in(bundle: &Path) -> Result<ModelAnswers, String> {
    let path = bundle.join(MODEL_ANSWERS_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => ModelAnswers::parse(&text, MODEL_ANSWERS_FILE).map_err(|e| e.to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ModelAnswers::default()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Set the manifest's version (the file is replaced, never written
/// through: it may be a hard link into the blob store).
fn set_version(bundle: &Path, version: &str) -> Result<(), String> {
    let path = bundle.join(MANIFEST_FILE);
    let err = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let text = std::fs::read_to_string(&path).map_err(|e| err(&e))?;
    let mut manifest: serde_json::Value = serde_json::from_str(&text).map_err(|e| err(&e))?;
    manifest["version"] = version.into();
    let out = serde_json::to_string_pretty(&manifest).map_err(|e| err(&e))?;
    let _ = std::fs::remove_file(&path);
    std::fs::write(&path, out).map_err(|e| err(&e))
}

impl Trainings {
    /// The release most enrolled nodes report serving (heartbeats); without
    /// reports, the training runs' baseline (the newest successful
    /// rollout's model, else the newest release). A knowledge-base release
    /// carries the model the branches run, not one they never received.
    async fn fleet_model(&self) -> Result<crate::store::ModelRow, TrainingError> {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for n in self.store.nodes().await? {
            if let (None, Some(hb)) = (n.revoked_at, &n.heartbeat)
                && !hb.model_version.is_empty()
            {
                *counts
                    .entry(format!("{}@{}", hb.model_name, hb.model_version))
                    .or_default() += 1;
            }
        }
        let most = counts
            .into_iter()
            .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
            .map(|(k, _)| k);
        if let Some(key) = most
            && let Some(m) = self.store.model(&key).await?
        {
            return Ok(m);
        }
        self.baseline(None).await
    }

    /// Publish the current answers as a knowledge-base release of the
    /// fleet's model; the run awaits approval (or is rolled out at once
    /// with auto-promotion). Refused when nothing changed.
    pub async fn release_answers(&self, by: &str) -> Result<TrainingRow, TrainingError> {
        if self.busy.swap(true, Ordering::AcqRel) {
            return Err(TrainingError::Conflict(
                "a training run or answer release is under way; release the answers when it is done"
                    .into(),
            ));
        }
        let _busy = Busy(self.busy.clone());
        let baseline = self.fleet_model().await?;
        let taken = self.versions_of(&baseline.name).await?;
        let version = dataset::next_patch(&baseline.version, &taken);
        let answers: Vec<IntentAnswer> = self.store.intent_answers().await?;
        let id = format!("kb-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let bundle = self.runs_dir.join(&id).join("bundle");
        let (models_dir, model, b, v) = (
            self.models_dir.clone(),
            baseline.clone(),
            bundle.clone(),
            version.clone(),
        );
        let changes = blocking(move || {
            std::fs::create_dir_all(&b).map_err(|e| format!("{}: {e}", b.display()))?;
            materialise(&models_dir, &model, &b)?;
            let before = answers_in(&b)?;
            ship_answers(&b, &answers)?;
            let after = answers_in(&b)?;
            set_version(&b, &v)?;
            Ok(diff(&before, &after))
        })
        .await
        .map_err(TrainingError::Invalid)?;
        if changes.is_empty() {
            let _ = tokio::fs::remove_dir_all(self.runs_dir.join(&id)).await;
            return Err(TrainingError::Invalid(format!(
                "model {} already carries these answers: nothing to release (write or change an answer first)",
                baseline.version
            )));
        }
        // The same release made a moment ago and not yet approved.
        let answers_json = serde_json::to_value(&changes).unwrap_or_default();
        let waiting = self.store.trainings(50).await?.into_iter().find(|t| {
            t.kind == "knowledge_base"
                && t.state == TrainingState::AwaitingApproval
                && t.baseline == baseline.id
                && t.report["answers"] == answers_json
        });
        if let Some(t) = waiting {
            let _ = tokio::fs::remove_dir_all(self.runs_dir.join(&id)).await;
            return Err(TrainingError::Conflict(format!(
                "release {} ({}) already carries these answers and awaits approval",
                t.version, t.id
            )));
        }
        let published = self
            .publish(&bundle)
            .await
            .map_err(TrainingError::Invalid)?;
        let _ = tokio::fs::remove_dir_all(self.runs_dir.join(&id)).await;
        let summary: BTreeMap<&str, usize> = changes.iter().fold(BTreeMap::new(), |mut m, c| {
            *m.entry(c.change.as_str()).or_default() += 1;
            m
        });
        let row = TrainingRow {
            id,
            kind: "knowledge_base".into(),
            state: TrainingState::AwaitingApproval,
            requested_by: by.to_owned(),
            created_at: now_ms(),
            finished_at: Some(now_ms()),
            baseline: baseline.id.clone(),
            baseline_version: baseline.version.clone(),
            version,
            model_id: Some(published.id.clone()),
            rollout_id: None,
            approved_by: None,
            trained_labels: 0,
            held_out_labels: 0,
            report: serde_json::json!({ "answers": changes, "summary": summary }),
            detail: String::new(),
            log_tail: String::new(),
        };
        self.store.training_save(row.clone()).await?;
        tracing::info!(release = %row.id, version = %row.version, from = %row.baseline_version,
            ?summary, by, "knowledge-base release published; awaiting approval");
        if self.config.auto_promote {
            drop(_busy);
            return self.approve(&row.id, serde_json::json!({}), "auto").await;
        }
        Ok(row)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_diff_names_what_was_added_changed_and_removed() {
        let parse = |t: &str| ModelAnswers::parse(t, "t").unwrap();
        let before = parse(
            "[intents.card_arrival]\nen = \"old\"\nzh = \"旧\"\n[intents.pin_blocked]\nen = \"p\"\nzh = \"p\"\n[intents.thanks]\nen = \"t\"\nzh = \"t\"\n",
        );
        let after = parse(
            "[intents.card_arrival]\nen = \"new\"\nzh = \"旧\"\n[intents.thanks]\nen = \"t\"\nzh = \"t\"\n[intents.queue_number]\nen = \"q\"\nzh = \"q\"\nquick_replies = { en = [\"Opening hours\"] }\n",
        );
        let d = diff(&before, &after);
        let got: Vec<(&str, &str)> = d
            .iter()
            .map(|c| (c.intent.as_str(), c.change.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("card_arrival", "changed"),
                ("pin_blocked", "removed"),
                ("queue_number", "added")
            ]
        );
        assert_eq!(d[0].before.as_ref().unwrap().en, "old");
        assert_eq!(d[2].after.as_ref().unwrap().quick_en, ["Opening hours"]);
        assert!(diff(&after, &after).is_empty());
    }
}
