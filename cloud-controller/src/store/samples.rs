//! The learning loop's samples: visitor turns the nodes sent up (masked)
//! for people to label, kept for `learning.sample_retention_days`.

use super::sql::{Conn, OptionalExtension, Row, SqlError, params};
use edgedesk_common::event::Sample;
use serde::{Deserialize, Serialize};

use super::{Store, StoreError};

/// A stored sample, as the API lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SampleRow {
    pub id: String,
    pub node_id: String,
    pub conversation: String,
    pub text: String,
    pub lang: String,
    /// low_confidence, rephrase, out_of_scope, escalated, rated_low, cancelled.
    pub reason: String,
    pub model_version: String,
    /// The model's top guesses, best first: `[{label, score}]`.
    #[schema(value_type = Object)]
    pub guesses: serde_json::Value,
    pub at: i64,
    pub label: Option<String>,
    /// Who gave the label (a console account id).
    pub labelled_by: Option<String>,
    /// The supervisor who reviewed the label, if one did.
    pub reviewed_by: Option<String>,
}

/// What to list.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
pub struct SampleQuery {
    pub node: Option<String>,
    pub reason: Option<String>,
    pub lang: Option<String>,
    /// Only those of one conversation (the chat id).
    pub conversation: Option<String>,
    /// Only those no one has labelled yet.
    #[serde(default)]
    pub unlabelled: bool,
    /// Most rows (default 100, at most 10,000), newest first.
    pub limit: Option<usize>,
}

/// Keep one sample (in the ingest transaction; a resent one is kept once).
pub(super) fn add(
    conn: &Conn,
    id: &str,
    node: &str,
    s: &Sample,
    at: i64,
) -> Result<(), StoreError> {
    let guesses =
        serde_json::to_string(&s.guesses).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    conn.prepare_cached(
        "INSERT INTO samples (id, node_id, conversation, text, lang, reason, model_version, guesses, at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) ON CONFLICT DO NOTHING",
    )?
    .execute(params![
        id,
        node,
        s.conversation,
        s.text,
        s.lang.as_str(),
        s.reason.as_str(),
        s.model_version,
        guesses,
        at
    ])?;
    Ok(())
}

pub(super) const COLUMNS: &str =
    "id, node_id, conversation, text, lang, reason, model_version, guesses, at, label,
     labelled_by, reviewed_by";

pub(super) fn row(r: &Row) -> Result<SampleRow, SqlError> {
    let guesses: String = r.get(7)?;
    Ok(SampleRow {
        id: r.get(0)?,
        node_id: r.get(1)?,
        conversation: r.get(2)?,
        text: r.get(3)?,
        lang: r.get(4)?,
        reason: r.get(5)?,
        model_version: r.get(6)?,
        guesses: serde_json::from_str(&guesses).unwrap_or_default(),
        at: r.get(8)?,
        label: r.get(9)?,
        labelled_by: r.get(10)?,
        reviewed_by: r.get(11)?,
    })
}

/// Sample `id`, if there is one.
pub(super) fn get(conn: &Conn, id: &str) -> Result<Option<SampleRow>, StoreError> {
    Ok(conn
        .prepare_cached(&format!("SELECT {COLUMNS} FROM samples WHERE id = ?1"))?
        .query_row([id], row)
        .optional()?)
}

fn set_label(
    c: &mut Conn,
    id: &str,
    label: &str,
    who: &str,
    overrule: bool,
    now: i64,
) -> Result<Option<Result<SampleRow, String>>, StoreError> {
    let tx = c.transaction()?;
    let current: Option<Option<String>> = tx
        .query_row("SELECT labelled_by FROM samples WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .optional()?;
    let Some(by) = current else {
        return Ok(None);
    };
    if let Some(by) = by.filter(|b| b != who && !overrule) {
        return Ok(Some(Err(by)));
    }
    tx.execute(
        "UPDATE samples SET label = ?2, labelled_by = ?3, labelled_at = ?4 WHERE id = ?1",
        params![id, label, who, now],
    )?;
    let labelled = get(&tx, id)?;
    tx.commit()?;
    Ok(labelled.map(Ok))
}

impl Store {
    pub async fn samples(&self, q: SampleQuery) -> Result<Vec<SampleRow>, StoreError> {
        self.db
            .call(move |c| {
                let mut stmt = c.prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM samples
                     WHERE (CAST(?1 AS TEXT) IS NULL OR node_id = ?1) AND (CAST(?2 AS TEXT) IS NULL OR reason = ?2)
                       AND (CAST(?3 AS TEXT) IS NULL OR lang = ?3) AND (?4 = 0 OR label IS NULL)
                       AND (CAST(?6 AS TEXT) IS NULL OR conversation = ?6)
                     ORDER BY at DESC, id LIMIT ?5"
                ))?;
                let limit = q.limit.unwrap_or(100).min(10_000) as i64;
                let rows = stmt.query_map(
                    params![
                        q.node,
                        q.reason,
                        q.lang,
                        q.unlabelled,
                        limit,
                        q.conversation
                    ],
                    row,
                )?;
                Ok(rows.collect::<Result<_, _>>()?)
            })
            .await
    }

    /// One sample by id.
    pub async fn sample(&self, id: &str) -> Result<Option<SampleRow>, StoreError> {
        let id = id.to_owned();
        self.db.call(move |c| get(c, &id)).await
    }

    /// Labels others gave that no supervisor reviewed yet, newest first, of
    /// which `picked` keeps the reviewed share.
    pub async fn review_queue(
        &self,
        me: &str,
        limit: usize,
        picked: impl Fn(&str) -> bool + Send + 'static,
    ) -> Result<Vec<SampleRow>, StoreError> {
        let me = me.to_owned();
        self.db
            .call(move |c| {
                let mut stmt = c.prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM samples
                     WHERE label IS NOT NULL AND reviewed_at IS NULL AND labelled_by IS DISTINCT FROM ?1
                     ORDER BY labelled_at DESC, id"
                ))?;
                let mut out = Vec::new();
                for r in stmt.query_map([&me], row)? {
                    let r = r?;
                    if picked(&r.id) {
                        out.push(r);
                        if out.len() == limit {
                            break;
                        }
                    }
                }
                Ok(out)
            })
            .await
    }

    /// A supervisor's review of sample `id`'s label: confirmed (`None`) or
    /// changed to `label`. `None` if it has no label to review.
    pub async fn review_sample(
        &self,
        id: &str,
        label: Option<String>,
        who: &str,
        now: i64,
    ) -> Result<Option<SampleRow>, StoreError> {
        let (id, who) = (id.to_owned(), who.to_owned());
        self.db
            .call(move |c| {
                let tx = c.transaction()?;
                let n = tx.execute(
                    "UPDATE samples SET label = COALESCE(?2, label), reviewed_by = ?3, reviewed_at = ?4
                     WHERE id = ?1 AND label IS NOT NULL",
                    params![id, label, who, now],
                )?;
                if n == 0 {
                    return Ok(None);
                }
                let r = get(&tx, &id)?;
                tx.commit()?;
                Ok(r)
            })
            .await
    }

    /// Label sample `id` as `label` by `who`. A sample someone else
    /// labelled is only relabelled by a supervisor (`overrule`). `None`: no
    /// such sample; `Err(by)`: already labelled by `by`.
    pub async fn label_sample(
        &self,
        id: &str,
        label: &str,
        who: &str,
        overrule: bool,
        now: i64,
    ) -> Result<Option<Result<SampleRow, String>>, StoreError> {
        let (id, label_, who) = (id.to_owned(), label.to_owned(), who.to_owned());
        self.db
            .call(move |c| set_label(c, &id, &label_, &who, overrule, now))
            .await
    }

    /// Every intent name the samples' guesses and labels mention, sorted
    /// (the console's intent picker).
    pub async fn sample_intents(&self) -> Result<Vec<String>, StoreError> {
        self.db
            .call(|c| {
                let d = c.dialect();
                let mut stmt = c.prepare_cached(&format!(
                    "SELECT DISTINCT {} FROM samples, {}
                     UNION SELECT DISTINCT label FROM samples WHERE label IS NOT NULL
                     ORDER BY 1",
                    d.json_field("g.value", "label"),
                    d.json_items("samples.guesses", "g")
                ))?;
                let rows = stmt.query_map([], |r| r.get::<_, Option<String>>(0))?;
                let all: Vec<Option<String>> = rows.collect::<Result<_, _>>()?;
                Ok(all.into_iter().flatten().collect())
            })
            .await
    }

    /// Forget samples older than `before` (ms); how many went.
    pub async fn prune_samples(&self, before: i64) -> Result<usize, StoreError> {
        self.db
            .call(move |c| Ok(c.execute("DELETE FROM samples WHERE at < ?1", [before])?))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgedesk_common::chat::Lang;
    use edgedesk_common::event::{Guess, SampleReason};

    #[test]
    fn a_label_is_kept_once_and_only_a_supervisor_overrules_a_colleague() {
        let mut c = super::super::test_conn();
        let s = Sample {
            conversation: "c1".into(),
            text: "wobble".into(),
            lang: Lang::En,
            reason: SampleReason::OutOfScope,
            model_version: "1.0.0".into(),
            guesses: vec![Guess {
                label: "out_of_scope".into(),
                score: 0.8,
            }],
        };
        add(&c, "e1", "n1", &s, 1).unwrap();
        add(&c, "e1", "n1", &s, 1).unwrap();
        let n: i64 = c
            .query_row("SELECT COUNT(*) FROM samples", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1, "a resent sample is kept once");
        assert!(
            set_label(&mut c, "nope", "x", "grace", false, 2)
                .unwrap()
                .is_none()
        );
        let first = set_label(&mut c, "e1", "card_arrival", "grace", false, 2)
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(first.label.as_deref(), Some("card_arrival"));
        // Grace may change her own label; a colleague may not; a supervisor may.
        assert!(
            set_label(&mut c, "e1", "out_of_scope", "grace", false, 3)
                .unwrap()
                .unwrap()
                .is_ok()
        );
        assert_eq!(
            set_label(&mut c, "e1", "pin_blocked", "alan", false, 4)
                .unwrap()
                .unwrap(),
            Err("grace".to_string())
        );
        let overruled = set_label(&mut c, "e1", "pin_blocked", "sam", true, 5)
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(overruled.label.as_deref(), Some("pin_blocked"));
    }
}
