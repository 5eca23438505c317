//! The regression gate: a candidate model's figures against the fleet's
//! model's, on the same rows, with stated tolerances. Pure: the figures come
//! from the manifests' validation metrics and from classifying the
//! held-out labelled samples (see [`super`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One figure and the rows it rests on.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Figure {
    pub rows: usize,
    pub value: f64,
}

/// A model's figures on one set of rows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    /// In-scope top-1 accuracy per language ("en", "zh").
    pub languages: BTreeMap<String, Figure>,
    /// Share of out-of-scope rows not answered.
    pub oos_recall: Option<Figure>,
    /// Top-1 accuracy per in-scope intent.
    pub intents: BTreeMap<String, Figure>,
}

/// How far a candidate may fall below the baseline.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Tolerance {
    /// Per language and for out-of-scope recall (absolute, e.g. 0.02).
    pub overall: f64,
    /// Per intent (absolute): intents rest on few rows, so this is wider.
    pub intent: f64,
    /// Fewest rows (in both models' figures) for a figure to be judged.
    pub min_rows: usize,
}

/// One figure that fell by more than its tolerance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Regression {
    /// Which set and figure: "validation: zh accuracy", "held-out: intent card_arrival".
    pub what: String,
    pub baseline: f64,
    pub candidate: f64,
    pub rows: usize,
}

impl std::fmt::Display for Regression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} fell from {:.3} to {:.3} ({} rows)",
            self.what, self.baseline, self.candidate, self.rows
        )
    }
}

/// Every figure of `set` on which `candidate` fell below `baseline` by more
/// than the tolerance. Figures one side lacks, or with fewer than
/// `min_rows` rows, are not judged; a new intent cannot regress.
pub fn judge(
    set: &str,
    baseline: &Figures,
    candidate: &Figures,
    tol: &Tolerance,
) -> Vec<Regression> {
    let mut out = Vec::new();
    let mut check = |what: String, b: &Figure, c: &Figure, allowed: f64| {
        let rows = b.rows.min(c.rows);
        // A small epsilon keeps "exactly the tolerance" on the passing side
        // despite float rounding.
        if rows >= tol.min_rows && c.value < b.value - allowed - 1e-9 {
            out.push(Regression {
                what,
                baseline: b.value,
                candidate: c.value,
                rows,
            });
        }
    };
    for (lang, b) in &baseline.languages {
        if let Some(c) = candidate.languages.get(lang) {
            check(format!("{set}: {lang} accuracy"), b, c, tol.overall);
        }
    }
    if let (Some(b), Some(c)) = (&baseline.oos_recall, &candidate.oos_recall) {
        check(format!("{set}: out-of-scope recall"), b, c, tol.overall);
    }
    for (intent, b) in &baseline.intents {
        if let Some(c) = candidate.intents.get(intent) {
            check(format!("{set}: intent {intent}"), b, c, tol.intent);
        }
    }
    out
}

/// The validation figures a bundle's manifest carries (`metrics`, written
/// by the training script before its refit, so no model saw those rows).
/// Missing metrics (a bundle from an older script) leave figures out.
pub fn from_manifest(metrics: &BTreeMap<String, serde_json::Value>) -> Figures {
    let num = |k: &str| metrics.get(k).and_then(serde_json::Value::as_f64);
    let rows = |k: &str| {
        metrics
            .get(k)
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0) as usize
    };
    let mut f = Figures::default();
    let intents: BTreeMap<String, (usize, usize)> = metrics
        .get("validation_per_intent")
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default();
    for (intent, (n, right)) in &intents {
        if *n > 0 {
            f.intents.insert(
                intent.clone(),
                Figure {
                    rows: *n,
                    value: *right as f64 / *n as f64,
                },
            );
        }
    }
    let all = rows("validation_rows");
    let zh = rows("validation_rows_zh");
    if let Some(v) = num("validation_accuracy_en") {
        f.languages.insert(
            "en".into(),
            Figure {
                rows: all.saturating_sub(zh),
                value: v,
            },
        );
    }
    if let Some(v) = num("validation_accuracy_zh") {
        f.languages
            .insert("zh".into(), Figure { rows: zh, value: v });
    }
    if let Some(v) = num("validation_oos_recall") {
        let in_scope: usize = intents.values().map(|(n, _)| n).sum();
        f.oos_recall = Some(Figure {
            // Without the per-intent counts the split is unknown: judge it.
            rows: if in_scope == 0 {
                all
            } else {
                all.saturating_sub(in_scope)
            },
            value: v,
        });
    }
    f
}

/// One classified row: its language, the label people gave, what the model
/// said, and whether it would have answered.
#[derive(Debug, Clone)]
pub struct Scored<'a> {
    pub lang: &'a str,
    pub expected: &'a str,
    pub predicted: &'a str,
    pub answered: bool,
}

/// Figures from classified rows: in-scope top-1 accuracy per language and
/// per intent, and out-of-scope recall (an `oos` row is right when the
/// model would not answer it).
pub fn from_rows(rows: &[Scored<'_>], oos: &str) -> Figures {
    let mut langs: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let mut intents: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let mut out_of_scope = (0usize, 0usize);
    for r in rows {
        if r.expected == oos {
            out_of_scope.0 += 1;
            out_of_scope.1 += usize::from(!r.answered);
            continue;
        }
        let right = usize::from(r.predicted == r.expected);
        for (map, key) in [(&mut langs, r.lang), (&mut intents, r.expected)] {
            let e = map.entry(key).or_default();
            e.0 += 1;
            e.1 += right;
        }
    }
    let fig = |(n, k): (usize, usize)| Figure {
        rows: n,
        value: if n == 0 { 0.0 } else { k as f64 / n as f64 },
    };
    Figures {
        languages: langs
            .into_iter()
            .map(|(k, v)| (k.to_owned(), fig(v)))
            .collect(),
        oos_recall: (out_of_scope.0 > 0).then(|| fig(out_of_scope)),
        intents: intents
            .into_iter()
            .map(|(k, v)| (k.to_owned(), fig(v)))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TOL: Tolerance = Tolerance {
        overall: 0.02,
        intent: 0.15,
        min_rows: 10,
    };

    fn figs(en: f64, oos: f64, card: f64) -> Figures {
        Figures {
            languages: [(
                "en".to_owned(),
                Figure {
                    rows: 500,
                    value: en,
                },
            )]
            .into(),
            oos_recall: Some(Figure {
                rows: 100,
                value: oos,
            }),
            intents: [(
                "card_arrival".to_owned(),
                Figure {
                    rows: 20,
                    value: card,
                },
            )]
            .into(),
        }
    }

    #[test]
    fn names_each_figure_that_fell_too_far() {
        let base = figs(0.90, 0.93, 0.80);
        assert!(judge("validation", &base, &figs(0.89, 0.92, 0.70), &TOL).is_empty());
        let r = judge("validation", &base, &figs(0.85, 0.93, 0.60), &TOL);
        let what: Vec<_> = r.iter().map(|r| r.what.as_str()).collect();
        assert_eq!(
            what,
            ["validation: en accuracy", "validation: intent card_arrival"]
        );
        assert_eq!(
            r[0].to_string(),
            "validation: en accuracy fell from 0.900 to 0.850 (500 rows)"
        );
        let r = judge("validation", &base, &figs(0.90, 0.80, 0.80), &TOL);
        assert_eq!(r[0].what, "validation: out-of-scope recall");
    }

    #[test]
    fn thin_figures_and_new_intents_are_not_judged() {
        let mut base = figs(0.9, 0.9, 0.9);
        base.intents.get_mut("card_arrival").unwrap().rows = 5;
        let mut cand = figs(0.9, 0.9, 0.0);
        cand.intents.insert(
            "branch_atm".into(),
            Figure {
                rows: 30,
                value: 0.0,
            },
        );
        assert!(judge("held-out", &base, &cand, &TOL).is_empty());
    }

    #[test]
    fn manifest_metrics_become_figures() {
        let m = serde_json::from_value(serde_json::json!({
            "validation_rows": 110, "validation_rows_zh": 30,
            "validation_accuracy_en": 0.9, "validation_accuracy_zh": 0.75,
            "validation_oos_recall": 0.95,
            "validation_per_intent": {"card_arrival": [20, 18], "greeting": [10, 10]},
        }))
        .unwrap();
        let f = from_manifest(&m);
        assert_eq!(
            f.languages["en"],
            Figure {
                rows: 80,
                value: 0.9
            }
        );
        assert_eq!(
            f.languages["zh"],
            Figure {
                rows: 30,
                value: 0.75
            }
        );
        assert_eq!(
            f.oos_recall,
            Some(Figure {
                rows: 80,
                value: 0.95
            })
        );
        assert_eq!(
            f.intents["card_arrival"],
            Figure {
                rows: 20,
                value: 0.9
            }
        );
        // An older bundle's metrics: what is there, nothing invented.
        let old =
            from_manifest(&[("validation_accuracy_zh".to_owned(), serde_json::json!(0.7))].into());
        assert!(old.intents.is_empty() && old.oos_recall.is_none());
        assert_eq!(old.languages.len(), 1);
    }

    #[test]
    fn rows_become_figures() {
        let r = |lang, expected, predicted, answered| Scored {
            lang,
            expected,
            predicted,
            answered,
        };
        let f = from_rows(
            &[
                r("en", "branch_atm", "branch_atm", true),
                r("en", "branch_atm", "atm_support", true),
                r("zh", "branch_atm", "branch_atm", false),
                r("zh", "out_of_scope", "greeting", false),
                r("en", "out_of_scope", "greeting", true),
            ],
            "out_of_scope",
        );
        assert_eq!(
            f.languages["en"],
            Figure {
                rows: 2,
                value: 0.5
            }
        );
        assert_eq!(
            f.languages["zh"],
            Figure {
                rows: 1,
                value: 1.0
            }
        );
        assert_eq!(f.intents["branch_atm"].rows, 3);
        assert_eq!(
            f.oos_recall,
            Some(Figure {
                rows: 2,
                value: 0.5
            })
        );
    }

    fn figures() -> impl Strategy<Value = Figures> {
        (
            prop::collection::btree_map("[a-z]{2}", (0usize..300, 0.0f64..=1.0), 0..3),
            proptest::option::of((0usize..300, 0.0f64..=1.0)),
            prop::collection::btree_map("[a-z_]{3,8}", (0usize..50, 0.0f64..=1.0), 0..6),
        )
            .prop_map(|(l, o, i)| {
                let fig = |(rows, value)| Figure { rows, value };
                Figures {
                    languages: l.into_iter().map(|(k, v)| (k, fig(v))).collect(),
                    oos_recall: o.map(fig),
                    intents: i.into_iter().map(|(k, v)| (k, fig(v))).collect(),
                }
            })
    }

    proptest! {
        /// The same model never regresses against itself, and a model
        /// better on every figure never does either.
        #[test]
        fn no_regression_without_a_drop(base in figures(), gain in 0.0f64..0.5) {
            prop_assert!(judge("s", &base, &base, &TOL).is_empty());
            let mut better = base.clone();
            for f in better.languages.values_mut().chain(better.intents.values_mut()).chain(better.oos_recall.iter_mut()) {
                f.value += gain;
            }
            prop_assert!(judge("s", &base, &better, &TOL).is_empty());
        }

        /// A drop beyond the tolerance on any judged figure is reported,
        /// by name, and nothing else is.
        #[test]
        fn every_judged_drop_is_reported(base in figures(), pick in 0usize..16, drop in 0.16f64..1.0) {
            let mut cand = base.clone();
            let mut keys: Vec<String> = Vec::new();
            for (k, f) in cand.languages.iter_mut() {
                keys.push(format!("s: {k} accuracy"));
                if keys.len() - 1 == pick { f.value -= drop; }
            }
            for (k, f) in cand.intents.iter_mut() {
                keys.push(format!("s: intent {k}"));
                if keys.len() - 1 == pick { f.value -= drop; }
            }
            let r = judge("s", &base, &cand, &TOL);
            match keys.get(pick) {
                Some(name) => {
                    let rows = if name.contains("intent") {
                        base.intents[name.trim_start_matches("s: intent ")].rows
                    } else {
                        base.languages[name.trim_start_matches("s: ").trim_end_matches(" accuracy")].rows
                    };
                    if rows >= TOL.min_rows {
                        prop_assert_eq!(r.len(), 1);
                        prop_assert_eq!(&r[0].what, name);
                    } else {
                        prop_assert!(r.is_empty());
                    }
                }
                None => prop_assert!(r.is_empty()),
            }
        }
    }
}
