//! Suggested intents: the questions nobody has labelled yet, grouped by
//! meaning with the fleet's own sentence encoder, so a supervisor sees
//! "people at three branches asked this 14 times" instead of 14 lines.
//!
//! The grouping is a child process like a training run — the same trainer
//! command with `--suggest SAMPLES --bundle DIR --out CLUSTERS`
//! (`scripts/suggest_intents.py`): average-linkage clustering on cosine
//! distance after each language's mean is taken out. It runs every
//! `training.suggest_every_secs` and when a supervisor asks; one at a time.
//! A supervisor makes an intent of a group (its questions are labelled, and
//! a new intent's answers are written in both languages, to ship with the
//! next model) or dismisses it (its questions are not grouped again).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Busy, TrainingError, Trainings, blocking, has_encoder, materialise};
use crate::downlink::now_ms;
use crate::store::StoreError;
use crate::store::samples::SampleRow;
use crate::store::suggestions::{NewSuggestion, SuggestionRow};

/// The newest unlabelled questions a grouping looks at (the clustering keeps
/// an n × n distance matrix).
pub const MAX_QUESTIONS: usize = 4000;
/// Questions shown per suggestion.
pub const EXAMPLES: usize = 8;

/// The last grouping, as the API shows it.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct GroupingStatus {
    /// idle (none since the controller started), running, done or failed.
    pub state: String,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// Who asked (an account id, `api`, or `schedule`).
    pub requested_by: Option<String>,
    /// Questions looked at and groups found (done).
    pub questions: usize,
    pub groups: usize,
    /// Why it failed, or why there was nothing to group.
    pub detail: String,
}

/// One example question of a suggestion.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Example {
    pub id: String,
    pub text: String,
    pub lang: String,
    pub node_id: String,
    /// The model's first guess when it was asked.
    pub guess: Option<String>,
    pub label: Option<String>,
}

/// How many of a suggestion's questions came from one branch.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct BranchCount {
    pub node_id: String,
    /// The node's `branch` label, if operators set one.
    pub name: Option<String>,
    pub count: usize,
}

/// A suggestion with what a supervisor needs to decide on it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SuggestionView {
    pub id: String,
    /// open, accepted or dismissed.
    pub state: String,
    pub created_at: i64,
    pub size: usize,
    /// Still without a label.
    pub unlabelled: usize,
    pub cohesion: f64,
    /// Questions per language (`en`, `zh`).
    pub languages: BTreeMap<String, usize>,
    /// Most questions first.
    pub branches: Vec<BranchCount>,
    /// The model's most frequent first guess for these questions.
    pub usual_guess: Option<String>,
    /// The best examples first.
    pub examples: Vec<Example>,
    pub intent: Option<String>,
    pub decided_by: Option<String>,
    pub decided_at: Option<i64>,
}

/// The suggestions page.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Suggestions {
    pub grouping: GroupingStatus,
    pub suggestions: Vec<SuggestionView>,
}

/// Make an intent of a suggestion.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct AcceptSuggestion {
    /// An intent the model knows, or `new:NAME` for one it is to learn.
    pub intent: String,
    /// A new intent's answers (both needed unless it already has them).
    #[serde(default)]
    pub en: Option<String>,
    #[serde(default)]
    pub zh: Option<String>,
}

/// What accepting did.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Accepted {
    pub suggestion: SuggestionView,
    /// Questions labelled now (others had a label already).
    pub labelled: usize,
}

fn first_guess(s: &SampleRow) -> Option<String> {
    s.guesses
        .get(0)
        .and_then(|g| g.get("label"))
        .and_then(|l| l.as_str())
        .map(str::to_owned)
}

impl Trainings {
    /// Start a grouping in the background (202 for the API). `Busy` when
    /// one is running.
    pub async fn group_questions(&self, by: &str) -> Result<GroupingStatus, TrainingError> {
        if self.grouping_busy.swap(true, Ordering::AcqRel) {
            return Err(TrainingError::Conflict(
                "the questions are being grouped already; the result shows here when it is done"
                    .into(),
            ));
        }
        let busy = Busy(self.grouping_busy.clone());
        let status = GroupingStatus {
            state: "running".into(),
            started_at: Some(now_ms()),
            requested_by: Some(by.to_owned()),
            ..Default::default()
        };
        *self.grouping.lock().expect("grouping status") = status.clone();
        let this = self.clone();
        tokio::spawn(async move {
            let _busy = busy;
            let outcome = this.group().await;
            let mut st = this.grouping.lock().expect("grouping status");
            st.finished_at = Some(now_ms());
            match outcome {
                Ok((questions, groups, detail)) => {
                    tracing::info!(
                        questions,
                        groups,
                        "questions grouped into suggested intents"
                    );
                    (st.state, st.questions, st.groups, st.detail) =
                        ("done".into(), questions, groups, detail);
                }
                Err(detail) => {
                    tracing::error!(%detail, "grouping the questions failed");
                    (st.state, st.detail) = ("failed".into(), detail);
                }
            }
        });
        Ok(status)
    }

    /// Group every `every` until shutdown (the first after one period).
    pub async fn group_periodically(self, every: Duration) {
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            if let Err(e) = self.group_questions("schedule").await {
                tracing::debug!(error = %e, "scheduled grouping skipped");
            }
        }
    }

    /// One grouping: (questions, groups, detail) or why it failed.
    async fn group(&self) -> Result<(usize, usize, String), String> {
        let err = |e: StoreError| e.to_string();
        let questions = self
            .store
            .samples_to_group(MAX_QUESTIONS)
            .await
            .map_err(err)?;
        let min = self.config.suggest_min_size;
        if questions.len() < min {
            self.store
                .replace_suggestions(Vec::new(), now_ms())
                .await
                .map_err(err)?;
            return Ok((
                questions.len(),
                0,
                format!(
                    "{} unlabelled question(s): a suggestion needs at least {min}",
                    questions.len()
                ),
            ));
        }
        let model = self.baseline(None).await.map_err(|e| e.to_string())?;
        let dir = self.runs_dir.join("grouping");
        let (bundle, samples, out) = (
            dir.join("bundle"),
            dir.join("samples.jsonl"),
            dir.join("clusters.json"),
        );
        let models_dir = self.models_dir.clone();
        let (d, b, s) = (dir.clone(), bundle.clone(), samples.clone());
        let lines: Vec<String> = questions
            .iter()
            .map(|q| serde_json::json!({"id": q.id, "text": q.text}).to_string())
            .collect();
        // `--encoder DIR` for a model without one of its own.
        let no_encoder = blocking(move || {
            let io = |what: &str, e: std::io::Error| format!("{what}: {e}");
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).map_err(|e| io("grouping directory", e))?;
            std::fs::write(&s, lines.join("\n") + "\n").map_err(|e| io("samples.jsonl", e))?;
            materialise(&models_dir, &model, &b)?;
            Ok(!has_encoder(&b)?)
        })
        .await?;
        let encoder = match no_encoder {
            true => Some(self.encoder_dir_checked(self.config.encoder_dir.clone())?),
            false => None,
        };
        let mut args: Vec<OsString> = vec![
            "--suggest".into(),
            samples.into(),
            "--bundle".into(),
            bundle.into(),
            "--data".into(),
            self.config.data_dir.clone().into(),
            "--out".into(),
            out.clone().into(),
            "--distance".into(),
            self.config.suggest_distance.to_string().into(),
            "--min-size".into(),
            self.config.suggest_min_size.to_string().into(),
        ];
        if let Some(e) = encoder {
            args.extend(["--encoder".into(), e.into()]);
        }
        let (tail, result) = self.run_trainer(&args, &dir).await;
        result.map_err(|e| format!("{e}: {}", tail.lines().last().unwrap_or_default()))?;
        let found = blocking(move || {
            let text = std::fs::read_to_string(&out).map_err(|e| format!("clusters.json: {e}"))?;
            parse_clusters(&text)
        })
        .await?;
        let groups = found.len();
        self.store
            .replace_suggestions(found, now_ms())
            .await
            .map_err(err)?;
        Ok((questions.len(), groups, String::new()))
    }

    /// The last grouping and every suggestion, open ones first.
    pub async fn suggestions(&self) -> Result<Suggestions, TrainingError> {
        let rows = self.store.suggestions().await?;
        let names = self.branch_names().await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            out.push(self.view(r, &names).await?);
        }
        Ok(Suggestions {
            grouping: self.grouping.lock().expect("grouping status").clone(),
            suggestions: out,
        })
    }

    /// Node id → its `branch` label, for the per-branch counts.
    async fn branch_names(&self) -> Result<BTreeMap<String, String>, TrainingError> {
        Ok(self
            .store
            .nodes()
            .await?
            .into_iter()
            .filter_map(|n| n.labels.get("branch").cloned().map(|b| (n.id, b)))
            .collect())
    }

    async fn view(
        &self,
        r: SuggestionRow,
        names: &BTreeMap<String, String>,
    ) -> Result<SuggestionView, TrainingError> {
        let members = self.store.samples_by_id(r.members.clone()).await?;
        let mut languages = BTreeMap::new();
        let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
        let mut guesses: BTreeMap<String, usize> = BTreeMap::new();
        for m in &members {
            *languages.entry(m.lang.clone()).or_default() += 1;
            *per_node.entry(m.node_id.clone()).or_default() += 1;
            if let Some(g) = first_guess(m) {
                *guesses.entry(g).or_default() += 1;
            }
        }
        let mut branches: Vec<BranchCount> = per_node
            .into_iter()
            .map(|(node_id, count)| BranchCount {
                name: names.get(&node_id).cloned(),
                node_id,
                count,
            })
            .collect();
        branches.sort_by(|a, b| b.count.cmp(&a.count).then(a.node_id.cmp(&b.node_id)));
        let usual_guess = guesses
            .into_iter()
            .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
            .map(|(g, _)| g);
        Ok(SuggestionView {
            id: r.id,
            state: r.state,
            created_at: r.created_at,
            size: members.len(),
            unlabelled: members.iter().filter(|m| m.label.is_none()).count(),
            cohesion: r.cohesion,
            languages,
            branches,
            usual_guess,
            examples: members
                .iter()
                .take(EXAMPLES)
                .map(|m| Example {
                    id: m.id.clone(),
                    text: m.text.clone(),
                    lang: m.lang.clone(),
                    node_id: m.node_id.clone(),
                    guess: first_guess(m),
                    label: m.label.clone(),
                })
                .collect(),
            intent: r.intent,
            decided_by: r.decided_by,
            decided_at: r.decided_at,
        })
    }

    /// Make an intent of suggestion `id`: its unlabelled questions get the
    /// label; a new intent without answers needs them in both languages.
    pub async fn accept_suggestion(
        &self,
        id: &str,
        req: AcceptSuggestion,
        by: &str,
    ) -> Result<Accepted, TrainingError> {
        let intent = super::dataset::intent_of(&req.intent).ok_or_else(|| {
            TrainingError::Invalid(
                "an intent name is a-z, 0-9 and _ (new:NAME for one the model is to learn)".into(),
            )
        })?;
        let label = req.intent.trim().to_owned();
        let is_new = label.starts_with("new:");
        let has_answer = self
            .store
            .intent_answers()
            .await?
            .iter()
            .any(|a| a.intent == intent);
        let answer = match (&req.en, &req.zh) {
            (None, None) if !is_new || has_answer => None,
            (None, None) => {
                return Err(TrainingError::Invalid(format!(
                    "{intent} is a new intent: write its answer in English and Chinese (en, zh)"
                )));
            }
            (en, zh) => Some(super::intent_answer(
                intent,
                en.as_deref().unwrap_or_default(),
                zh.as_deref().unwrap_or_default(),
                Default::default(),
                by,
            )?),
        };
        // Exists and is open before anything is written.
        match self.store.suggestion(id).await? {
            None => return Err(TrainingError::NotFound(id.to_owned())),
            Some(s) if s.state != "open" => {
                return Err(TrainingError::Conflict(format!(
                    "suggestion {id} is {} already",
                    s.state
                )));
            }
            Some(_) => {}
        }
        if let Some(a) = answer {
            self.store.set_intent_answer(a).await?;
        }
        let (row, labelled) = self.decide(id, Some(label.clone()), by).await?;
        tracing::info!(suggestion = %id, intent = %label, labelled, by, "suggested intent accepted");
        Ok(Accepted {
            suggestion: self.view(row, &self.branch_names().await?).await?,
            labelled,
        })
    }

    /// Dismiss suggestion `id`: its questions are not grouped again.
    pub async fn dismiss_suggestion(
        &self,
        id: &str,
        by: &str,
    ) -> Result<SuggestionView, TrainingError> {
        let (row, _) = self.decide(id, None, by).await?;
        tracing::info!(suggestion = %id, by, "suggested intent dismissed");
        self.view(row, &self.branch_names().await?).await
    }

    async fn decide(
        &self,
        id: &str,
        intent: Option<String>,
        by: &str,
    ) -> Result<(SuggestionRow, usize), TrainingError> {
        match self
            .store
            .decide_suggestion(id, intent, by, now_ms())
            .await?
        {
            None => Err(TrainingError::NotFound(id.to_owned())),
            Some(Err(state)) => Err(TrainingError::Conflict(format!(
                "suggestion {id} is {state} already"
            ))),
            Some(Ok(done)) => Ok(done),
        }
    }
}

/// The clustering step's output: `{"clusters": [{"members": [...],
/// "cohesion": x}]}`.
pub fn parse_clusters(text: &str) -> Result<Vec<NewSuggestion>, String> {
    #[derive(Deserialize)]
    struct Doc {
        clusters: Vec<Cluster>,
    }
    #[derive(Deserialize)]
    struct Cluster {
        members: Vec<String>,
        cohesion: f64,
    }
    let doc: Doc = serde_json::from_str(text).map_err(|e| format!("clusters.json: {e}"))?;
    Ok(doc
        .clusters
        .into_iter()
        .filter(|c| !c.members.is_empty())
        .map(|c| NewSuggestion {
            members: c.members,
            cohesion: c.cohesion,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clustering_output_is_read_and_a_broken_one_named() {
        let ok = parse_clusters(r#"{"distance":0.55,"clusters":[{"members":["a","b","c"],"cohesion":0.8},{"members":[],"cohesion":1}]}"#).unwrap();
        assert_eq!(ok.len(), 1);
        assert_eq!(ok[0].members, ["a", "b", "c"]);
        let bad = parse_clusters(r#"{"clusters":[{"members":"a"}]}"#).unwrap_err();
        assert!(bad.starts_with("clusters.json:"), "{bad}");
    }
}
