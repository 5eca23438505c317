//! Suggested intents: groups of questions the fleet did not understand,
//! found by the clustering step (`training::suggest`), and what a
//! supervisor decided about each (made an intent of it, or dismissed it).
//! A new clustering replaces the open groups; decided ones are kept, and
//! the questions of a dismissed group are not grouped again.

use super::sql::{Conn, OptionalExtension, Row, SqlError, params};
use serde::{Deserialize, Serialize};

use super::samples::SampleRow;
use super::{Store, StoreError};

/// A group as the clustering step found it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewSuggestion {
    /// Sample ids, the best examples (closest to the group's centre) first.
    pub members: Vec<String>,
    /// Mean cosine similarity of the members to the centre.
    pub cohesion: f64,
}

/// A stored suggestion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SuggestionRow {
    pub id: String,
    pub created_at: i64,
    pub members: Vec<String>,
    pub cohesion: f64,
    /// open, accepted or dismissed.
    pub state: String,
    /// The intent its questions were labelled with (accepted).
    pub intent: Option<String>,
    pub decided_by: Option<String>,
    pub decided_at: Option<i64>,
}

fn row(r: &Row) -> Result<SuggestionRow, SqlError> {
    let members: String = r.get(2)?;
    Ok(SuggestionRow {
        id: r.get(0)?,
        created_at: r.get(1)?,
        members: serde_json::from_str(&members).unwrap_or_default(),
        cohesion: r.get(3)?,
        state: r.get(4)?,
        intent: r.get(5)?,
        decided_by: r.get(6)?,
        decided_at: r.get(7)?,
    })
}

const COLUMNS: &str = "id, created_at, members, cohesion, state, intent, decided_by, decided_at";

fn get(c: &Conn, id: &str) -> Result<Option<SuggestionRow>, StoreError> {
    Ok(
        c.prepare_cached(&format!("SELECT {COLUMNS} FROM suggestions WHERE id = ?1"))?
            .query_row([id], row)
            .optional()?,
    )
}

impl Store {
    /// The questions to group: unlabelled samples that are in no dismissed
    /// group, newest first, at most `limit`.
    pub async fn samples_to_group(&self, limit: usize) -> Result<Vec<SampleRow>, StoreError> {
        self.db
            .call(move |c| {
                let mut stmt = c.prepare_cached(&format!(
                    "SELECT {} FROM samples
                     WHERE label IS NULL AND id NOT IN (
                       SELECT m.value FROM suggestions g, {}
                       WHERE g.state = 'dismissed')
                     ORDER BY at DESC, id LIMIT ?1",
                    super::samples::COLUMNS,
                    c.dialect().json_items("g.members", "m")
                ))?;
                let rows = stmt.query_map([limit as i64], super::samples::row)?;
                Ok(rows.collect::<Result<_, _>>()?)
            })
            .await
    }

    /// Samples by id, in the order given (unknown ids are left out).
    pub async fn samples_by_id(&self, ids: Vec<String>) -> Result<Vec<SampleRow>, StoreError> {
        self.db
            .call(move |c| {
                let mut out = Vec::with_capacity(ids.len());
                for id in &ids {
                    out.extend(super::samples::get(c, id)?);
                }
                Ok(out)
            })
            .await
    }

    /// Replace the open suggestions with `found` (one transaction); the
    /// stored rows.
    pub async fn replace_suggestions(
        &self,
        found: Vec<NewSuggestion>,
        now: i64,
    ) -> Result<Vec<SuggestionRow>, StoreError> {
        self.db
            .call(move |c| {
                let tx = c.transaction()?;
                tx.execute("DELETE FROM suggestions WHERE state = 'open'", [])?;
                let mut out = Vec::with_capacity(found.len());
                for s in found {
                    let id = format!("sg-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
                    let members = serde_json::to_string(&s.members)
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                    tx.execute(
                        "INSERT INTO suggestions (id, created_at, members, cohesion, state)
                         VALUES (?1, ?2, ?3, ?4, 'open')",
                        params![id, now, members, s.cohesion],
                    )?;
                    out.extend(get(&tx, &id)?);
                }
                tx.commit()?;
                Ok(out)
            })
            .await
    }

    /// Suggestions, open ones first (largest first), then the decided ones
    /// newest first.
    pub async fn suggestions(&self) -> Result<Vec<SuggestionRow>, StoreError> {
        self.db
            .call(|c| {
                let mut stmt = c.prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM suggestions
                     ORDER BY state != 'open', {} DESC, decided_at DESC NULLS LAST, id",
                    c.dialect().json_length("members")
                ))?;
                let rows = stmt.query_map([], row)?;
                Ok(rows.collect::<Result<_, _>>()?)
            })
            .await
    }

    pub async fn suggestion(&self, id: &str) -> Result<Option<SuggestionRow>, StoreError> {
        let id = id.to_owned();
        self.db.call(move |c| get(c, &id)).await
    }

    /// Decide an open suggestion: `intent` labels its still unlabelled
    /// questions (by `who`) and marks it accepted; `None` dismisses it.
    /// `Ok(None)`: no such suggestion; `Err(state)`: already decided.
    /// Returns the suggestion and how many questions were labelled.
    pub async fn decide_suggestion(
        &self,
        id: &str,
        intent: Option<String>,
        who: &str,
        now: i64,
    ) -> Result<Option<Result<(SuggestionRow, usize), String>>, StoreError> {
        let (id, who) = (id.to_owned(), who.to_owned());
        self.db
            .call(move |c| {
                let tx = c.transaction()?;
                let Some(s) = get(&tx, &id)? else {
                    return Ok(None);
                };
                if s.state != "open" {
                    return Ok(Some(Err(s.state)));
                }
                let mut labelled = 0;
                if let Some(intent) = &intent {
                    let mut stmt = tx.prepare_cached(
                        "UPDATE samples SET label = ?2, labelled_by = ?3, labelled_at = ?4
                         WHERE id = ?1 AND label IS NULL",
                    )?;
                    for m in &s.members {
                        labelled += stmt.execute(params![m, intent, who, now])?;
                    }
                }
                tx.execute(
                    "UPDATE suggestions SET state = ?2, intent = ?3, decided_by = ?4, decided_at = ?5
                     WHERE id = ?1",
                    params![
                        id,
                        if intent.is_some() { "accepted" } else { "dismissed" },
                        intent,
                        who,
                        now
                    ],
                )?;
                let s = get(&tx, &id)?.ok_or_else(|| StoreError::Corrupt("suggestion vanished".into()))?;
                tx.commit()?;
                Ok(Some(Ok((s, labelled))))
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::super::samples::add;
    use super::*;
    use edgedesk_common::chat::Lang;
    use edgedesk_common::event::{Sample, SampleReason};

    fn sample(text: &str) -> Sample {
        Sample {
            conversation: "c".into(),
            text: text.into(),
            lang: Lang::En,
            reason: SampleReason::OutOfScope,
            model_version: "1.0.0".into(),
            guesses: vec![],
        }
    }

    #[tokio::test]
    async fn a_suggestion_is_accepted_or_dismissed_once_and_dismissed_questions_stay_ungrouped() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::test_store(&dir.path().join("s.db"));
        store
            .db
            .call(|c| {
                for (i, t) in ["a", "b", "c", "d", "e"].iter().enumerate() {
                    add(c, &format!("s{i}"), "n1", &sample(t), i as i64)?;
                }
                Ok(())
            })
            .await
            .unwrap();
        let found = |m: &[&str]| NewSuggestion {
            members: m.iter().map(|s| s.to_string()).collect(),
            cohesion: 0.8,
        };
        let first = store
            .replace_suggestions(vec![found(&["s0", "s1"]), found(&["s2", "s3"])], 10)
            .await
            .unwrap();
        assert_eq!(first.len(), 2);
        // An agent labelled s1 in the meantime: accepting labels only s0.
        store
            .label_sample("s1", "card_arrival", "grace", false, 11)
            .await
            .unwrap();
        let (acc, n) = store
            .decide_suggestion(&first[0].id, Some("new:queue_number".into()), "sam", 12)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!((acc.state.as_str(), n), ("accepted", 1));
        assert_eq!(
            store.sample("s0").await.unwrap().unwrap().label.as_deref(),
            Some("new:queue_number")
        );
        assert_eq!(
            store.sample("s1").await.unwrap().unwrap().label.as_deref(),
            Some("card_arrival"),
            "a label someone gave is not overwritten"
        );
        assert_eq!(
            store
                .decide_suggestion(&first[0].id, None, "sam", 13)
                .await
                .unwrap()
                .unwrap(),
            Err("accepted".to_string())
        );
        assert!(
            store
                .decide_suggestion("sg-nope", None, "sam", 13)
                .await
                .unwrap()
                .is_none()
        );
        store
            .decide_suggestion(&first[1].id, None, "sam", 14)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        // Left to group: unlabelled and not dismissed.
        let left: Vec<String> = store
            .samples_to_group(100)
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.id)
            .collect();
        assert_eq!(left, ["s4"]);
        // A new clustering replaces open groups only.
        store
            .replace_suggestions(vec![found(&["s4"])], 20)
            .await
            .unwrap();
        let all = store.suggestions().await.unwrap();
        let states: Vec<&str> = all.iter().map(|s| s.state.as_str()).collect();
        assert_eq!(states, ["open", "dismissed", "accepted"]);
    }
}
