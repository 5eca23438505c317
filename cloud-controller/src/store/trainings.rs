//! The learning loop's training runs, each kept whole as JSON (with its
//! state in a column), and the labelled samples a run trains on.

use super::sql::{OptionalExtension, SqlError, params};
use serde::{Deserialize, Serialize};

use super::{Store, StoreError};

/// Where a training run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TrainingState {
    /// The trainer is running, or the candidate is being evaluated.
    Running,
    /// The trainer failed, timed out or was interrupted; see `detail`.
    Failed,
    /// The candidate regressed; `detail` and `report` say where.
    Refused,
    /// The candidate passed and is published; a supervisor's approval starts its rollout.
    AwaitingApproval,
    /// Its rollout was created (`rollout_id`).
    Promoted,
}

impl TrainingState {
    pub fn as_str(self) -> &'static str {
        match self {
            TrainingState::Running => "running",
            TrainingState::Failed => "failed",
            TrainingState::Refused => "refused",
            TrainingState::AwaitingApproval => "awaiting_approval",
            TrainingState::Promoted => "promoted",
        }
    }
}

/// One training run, as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TrainingRow {
    pub id: String,
    /// `model` (trained on labels) or `knowledge_base` (the fleet's model
    /// with the supervisors' answers, not trained: a knowledge-base release).
    #[serde(default = "model_kind")]
    pub kind: String,
    pub state: TrainingState,
    /// Who asked for it (`api`, or `auto` for a scheduled run).
    pub requested_by: String,
    pub created_at: i64,
    pub finished_at: Option<i64>,
    /// The release the candidate is compared with (the fleet's model).
    pub baseline: String,
    pub baseline_version: String,
    /// The candidate's version, and its release id once published.
    pub version: String,
    pub model_id: Option<String>,
    pub rollout_id: Option<String>,
    /// Who approved the rollout (`auto` with `training.auto_promote`).
    #[serde(default)]
    pub approved_by: Option<String>,
    /// Labelled samples trained on, and those held out for evaluation.
    pub trained_labels: usize,
    pub held_out_labels: usize,
    /// The regression gate's figures (baseline and candidate) and verdict.
    #[schema(value_type = Object)]
    pub report: serde_json::Value,
    /// Why it failed or was refused; empty otherwise.
    pub detail: String,
    /// The trainer's last lines of output.
    pub log_tail: String,
}

fn model_kind() -> String {
    "model".into()
}

/// An answer a supervisor wrote for an intent the model learns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct IntentAnswer {
    pub intent: String,
    pub en: String,
    pub zh: String,
    /// Suggested follow-ups shown under the answer, per language.
    #[serde(default)]
    pub quick_replies: QuickReplies,
    pub updated_by: String,
    pub updated_at: i64,
}

/// Quick replies in each language.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct QuickReplies {
    #[serde(default)]
    pub en: Vec<String>,
    #[serde(default)]
    pub zh: Vec<String>,
}

/// A labelled sample as training needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelledSample {
    pub id: String,
    pub text: String,
    pub lang: String,
    pub label: String,
}

impl Store {
    /// Insert or replace run `t`.
    pub async fn training_save(&self, t: TrainingRow) -> Result<(), StoreError> {
        let body = serde_json::to_string(&t).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.db
            .call(move |c| {
                c.execute(
                    "INSERT INTO trainings (id, state, created_at, body) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT(id) DO UPDATE SET state = excluded.state, body = excluded.body",
                    params![t.id, t.state.as_str(), t.created_at, body],
                )?;
                Ok(())
            })
            .await
    }

    pub async fn training(&self, id: &str) -> Result<Option<TrainingRow>, StoreError> {
        let id = id.to_owned();
        self.db
            .call(move |c| {
                let body: Option<String> = c
                    .query_row("SELECT body FROM trainings WHERE id = ?1", [id], |r| {
                        r.get(0)
                    })
                    .optional()?;
                body.map(|b| parse(&b)).transpose()
            })
            .await
    }

    /// Training runs, newest first (at most `limit`).
    pub async fn trainings(&self, limit: usize) -> Result<Vec<TrainingRow>, StoreError> {
        self.db
            .call(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT body FROM trainings ORDER BY created_at DESC, id DESC LIMIT ?1",
                )?;
                let rows = stmt.query_map([limit as i64], |r| r.get::<_, String>(0))?;
                rows.map(|b| parse(&b?)).collect()
            })
            .await
    }

    /// Every intent answer, by intent.
    pub async fn intent_answers(&self) -> Result<Vec<IntentAnswer>, StoreError> {
        self.db
            .call(|c| {
                let mut stmt = c.prepare_cached(
                    "SELECT intent, en, zh, updated_by, updated_at, quick_en, quick_zh
                     FROM intent_answers ORDER BY intent",
                )?;
                let rows = stmt.query_map([], |r| {
                    let list = |i: usize| -> Result<Vec<String>, SqlError> {
                        let text: String = r.get(i)?;
                        Ok(serde_json::from_str(&text).unwrap_or_default())
                    };
                    Ok(IntentAnswer {
                        intent: r.get(0)?,
                        en: r.get(1)?,
                        zh: r.get(2)?,
                        quick_replies: QuickReplies {
                            en: list(5)?,
                            zh: list(6)?,
                        },
                        updated_by: r.get(3)?,
                        updated_at: r.get(4)?,
                    })
                })?;
                Ok(rows.collect::<Result<_, _>>()?)
            })
            .await
    }

    /// Write (or replace) an intent's answer.
    pub async fn set_intent_answer(&self, a: IntentAnswer) -> Result<(), StoreError> {
        self.db
            .call(move |c| {
                let json = |l: &Vec<String>| serde_json::to_string(l).unwrap_or_else(|_| "[]".into());
                c.execute(
                    "INSERT INTO intent_answers (intent, en, zh, updated_by, updated_at, quick_en, quick_zh)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                     ON CONFLICT(intent) DO UPDATE SET en = excluded.en, zh = excluded.zh,
                         updated_by = excluded.updated_by, updated_at = excluded.updated_at,
                         quick_en = excluded.quick_en, quick_zh = excluded.quick_zh",
                    params![
                        a.intent,
                        a.en,
                        a.zh,
                        a.updated_by,
                        a.updated_at,
                        json(&a.quick_replies.en),
                        json(&a.quick_replies.zh)
                    ],
                )?;
                Ok(())
            })
            .await
    }

    /// Forget an intent's answer; whether there was one.
    pub async fn delete_intent_answer(&self, intent: &str) -> Result<bool, StoreError> {
        let intent = intent.to_owned();
        self.db
            .call(move |c| {
                Ok(c.execute("DELETE FROM intent_answers WHERE intent = ?1", [intent])? > 0)
            })
            .await
    }

    /// Every labelled sample, oldest first.
    pub async fn labelled_samples(&self) -> Result<Vec<LabelledSample>, StoreError> {
        self.db
            .call(|c| {
                let mut stmt = c.prepare_cached(
                    "SELECT id, text, lang, label FROM samples WHERE label IS NOT NULL ORDER BY at, id",
                )?;
                let rows = stmt.query_map([], |r| {
                    Ok(LabelledSample {
                        id: r.get(0)?,
                        text: r.get(1)?,
                        lang: r.get(2)?,
                        label: r.get(3)?,
                    })
                })?;
                Ok(rows.collect::<Result<_, _>>()?)
            })
            .await
    }
}

fn parse(body: &str) -> Result<TrainingRow, StoreError> {
    serde_json::from_str(body).map_err(|e| StoreError::Corrupt(format!("trainings.body: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_run_is_kept_whole_and_listed_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::test_store(&dir.path().join("c.db"));
        let mut t = TrainingRow {
            id: "tr-1".into(),
            kind: "model".into(),
            state: TrainingState::Running,
            requested_by: "api".into(),
            created_at: 1,
            finished_at: None,
            baseline: "m0".into(),
            baseline_version: "1.0.0".into(),
            version: "1.1.0".into(),
            model_id: None,
            rollout_id: None,
            approved_by: None,
            trained_labels: 3,
            held_out_labels: 1,
            report: serde_json::json!({}),
            detail: String::new(),
            log_tail: String::new(),
        };
        store.training_save(t.clone()).await.unwrap();
        t.state = TrainingState::Refused;
        t.detail = "English accuracy fell".into();
        store.training_save(t.clone()).await.unwrap();
        let mut later = t.clone();
        later.id = "tr-2".into();
        later.created_at = 2;
        store.training_save(later).await.unwrap();
        assert_eq!(store.training("tr-1").await.unwrap(), Some(t));
        let ids: Vec<_> = store
            .trainings(10)
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.id)
            .collect();
        assert_eq!(ids, ["tr-2", "tr-1"]);
        assert_eq!(store.training("nope").await.unwrap(), None);
    }
}
