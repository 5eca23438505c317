//! Evaluation metrics for `edge-node nlu eval FILE.csv`.
//!
//! Input rows are `text,category` (the BANKING77 format). A row labelled
//! `out_of_scope` is correct when the node would not answer it with an intent.
//! The metrics are pure functions of the per-row outcomes so they can be tested
//! without a model: overall, per language (the caller tags each row), and the
//! intent pairs most often confused.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

/// One classified row.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub expected: String,
    pub predicted: String,
    pub answered: bool,
    pub micros: f64,
    /// Language of the row's text ("en", "zh").
    pub lang: String,
    /// Whether the model's first stage answered it alone; `None` for a
    /// model without one.
    pub first_stage: Option<bool>,
}

/// How often one intent was taken for another (in-scope rows).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Confusion {
    pub expected: String,
    pub predicted: String,
    pub count: usize,
}

/// Pairs listed by [`report`].
pub const MOST_CONFUSED: usize = 10;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    pub rows: usize,
    pub in_scope_rows: usize,
    pub out_of_scope_rows: usize,
    /// In-scope rows: top label right. Out-of-scope rows: not answered.
    pub accuracy: f64,
    /// Macro-averaged F1 of the top label over the in-scope classes.
    pub macro_f1: f64,
    /// Share of in-scope rows the node answers (confident and in scope).
    pub coverage: f64,
    /// In-scope rows answered and right, plus out-of-scope rows not answered.
    pub accuracy_at_threshold: f64,
    /// Share of out-of-scope rows not answered; `None` without such rows.
    pub oos_recall: Option<f64>,
    pub threshold: f32,
    pub latency_p50_us: f64,
    pub latency_p99_us: f64,
    /// Mean time per row: with a first stage the distribution has two
    /// humps, and the mean is what bounds throughput.
    pub latency_mean_us: f64,
    /// Share of rows the model's first stage answered without the main
    /// model (`None` for a model without a first stage).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_stage_share: Option<f64>,
    /// The same figures for each language's rows (when there is more than one).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub by_language: BTreeMap<String, Report>,
    /// The most frequent (expected, predicted) mistakes, most frequent first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub most_confused: Vec<Confusion>,
}

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("cannot read {path}: {message}")]
    Read { path: String, message: String },
    #[error("{path} has no `text` and `category` columns")]
    Columns { path: String },
    #[error("{path} has no rows")]
    Empty { path: String },
}

/// Read `text,category` rows.
pub fn read_rows(path: &Path) -> Result<Vec<(String, String)>, EvalError> {
    let p = path.display().to_string();
    let mut reader = csv::Reader::from_path(path).map_err(|e| EvalError::Read {
        path: p.clone(),
        message: e.to_string(),
    })?;
    let headers = reader.headers().map_err(|e| EvalError::Read {
        path: p.clone(),
        message: e.to_string(),
    })?;
    let col = |name: &str| headers.iter().position(|h| h.trim() == name);
    let (Some(ti), Some(ci)) = (col("text"), col("category")) else {
        return Err(EvalError::Columns { path: p });
    };
    let mut rows = Vec::new();
    for rec in reader.records() {
        let rec = rec.map_err(|e| EvalError::Read {
            path: p.clone(),
            message: e.to_string(),
        })?;
        rows.push((
            rec.get(ti).unwrap_or("").to_owned(),
            rec.get(ci).unwrap_or("").to_owned(),
        ));
    }
    if rows.is_empty() {
        return Err(EvalError::Empty { path: p });
    }
    Ok(rows)
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Everything `nlu eval` prints: overall, per language and most confused.
pub fn report(outcomes: &[Outcome], oos_label: &str, threshold: f32) -> Report {
    let mut r = summary(outcomes, oos_label, threshold);
    let mut langs: BTreeMap<&str, Vec<Outcome>> = BTreeMap::new();
    for o in outcomes {
        langs.entry(&o.lang).or_default().push(o.clone());
    }
    if langs.len() > 1 {
        r.by_language = langs
            .into_iter()
            .map(|(l, rows)| (l.to_owned(), summary(&rows, oos_label, threshold)))
            .collect();
    }
    let mut pairs: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for o in outcomes {
        if o.expected != oos_label && o.predicted != o.expected {
            *pairs.entry((&o.expected, &o.predicted)).or_default() += 1;
        }
    }
    let mut pairs: Vec<Confusion> = pairs
        .into_iter()
        .map(|((e, p), count)| Confusion {
            expected: e.to_owned(),
            predicted: p.to_owned(),
            count,
        })
        .collect();
    // Most frequent first; ties in name order (the map's), so output is stable.
    pairs.sort_by_key(|c| std::cmp::Reverse(c.count));
    pairs.truncate(MOST_CONFUSED);
    r.most_confused = pairs;
    r
}

fn summary(outcomes: &[Outcome], oos_label: &str, threshold: f32) -> Report {
    let n = outcomes.len().max(1) as f64;
    let (inscope, oos): (Vec<&Outcome>, Vec<&Outcome>) =
        outcomes.iter().partition(|o| o.expected != oos_label);
    let correct = inscope.iter().filter(|o| o.predicted == o.expected).count()
        + oos.iter().filter(|o| !o.answered).count();
    let correct_at = inscope
        .iter()
        .filter(|o| o.answered && o.predicted == o.expected)
        .count()
        + oos.iter().filter(|o| !o.answered).count();

    // Per-class F1 over the in-scope classes (those that appear as expected labels).
    let mut tp: BTreeMap<&str, f64> = BTreeMap::new();
    let mut fp: BTreeMap<&str, f64> = BTreeMap::new();
    let mut fneg: BTreeMap<&str, f64> = BTreeMap::new();
    for o in &inscope {
        if o.predicted == o.expected {
            *tp.entry(&o.expected).or_default() += 1.0;
        } else {
            *fneg.entry(&o.expected).or_default() += 1.0;
            *fp.entry(&o.predicted).or_default() += 1.0;
        }
    }
    let classes: Vec<&str> = {
        let mut c: Vec<&str> = inscope.iter().map(|o| o.expected.as_str()).collect();
        c.sort_unstable();
        c.dedup();
        c
    };
    let f1_sum: f64 = classes
        .iter()
        .map(|c| {
            let t = tp.get(c).copied().unwrap_or(0.0);
            let denom =
                2.0 * t + fp.get(c).copied().unwrap_or(0.0) + fneg.get(c).copied().unwrap_or(0.0);
            if denom == 0.0 { 0.0 } else { 2.0 * t / denom }
        })
        .sum();

    let mut lat: Vec<f64> = outcomes.iter().map(|o| o.micros).collect();
    lat.sort_by(f64::total_cmp);
    Report {
        rows: outcomes.len(),
        in_scope_rows: inscope.len(),
        out_of_scope_rows: oos.len(),
        accuracy: correct as f64 / n,
        macro_f1: if classes.is_empty() {
            0.0
        } else {
            f1_sum / classes.len() as f64
        },
        coverage: if inscope.is_empty() {
            0.0
        } else {
            inscope.iter().filter(|o| o.answered).count() as f64 / inscope.len() as f64
        },
        accuracy_at_threshold: correct_at as f64 / n,
        oos_recall: (!oos.is_empty())
            .then(|| oos.iter().filter(|o| !o.answered).count() as f64 / oos.len() as f64),
        threshold,
        latency_p50_us: percentile(&lat, 0.50),
        latency_p99_us: percentile(&lat, 0.99),
        latency_mean_us: lat.iter().sum::<f64>() / lat.len().max(1) as f64,
        first_stage_share: outcomes.iter().any(|o| o.first_stage.is_some()).then(|| {
            outcomes
                .iter()
                .filter(|o| o.first_stage == Some(true))
                .count() as f64
                / n
        }),
        by_language: BTreeMap::new(),
        most_confused: Vec::new(),
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "rows                   {} ({} in scope, {} out of scope)",
            self.rows, self.in_scope_rows, self.out_of_scope_rows
        )?;
        writeln!(f, "accuracy               {:.4}", self.accuracy)?;
        writeln!(f, "macro-F1               {:.4}", self.macro_f1)?;
        writeln!(f, "threshold              {:.2}", self.threshold)?;
        writeln!(f, "coverage               {:.4}", self.coverage)?;
        writeln!(
            f,
            "accuracy@threshold     {:.4}",
            self.accuracy_at_threshold
        )?;
        match self.oos_recall {
            Some(r) => writeln!(f, "out-of-scope recall    {r:.4}")?,
            None => writeln!(f, "out-of-scope recall    n/a (no out_of_scope rows)")?,
        }
        writeln!(f, "latency p50            {:.1} µs", self.latency_p50_us)?;
        writeln!(f, "latency p99            {:.1} µs", self.latency_p99_us)?;
        write!(f, "latency mean           {:.1} µs", self.latency_mean_us)?;
        if let Some(share) = self.first_stage_share {
            write!(
                f,
                "\nfirst stage            {:.1} % of rows answered without the main model",
                share * 100.0
            )?;
        }
        for (lang, r) in &self.by_language {
            write!(
                f,
                "\n[{lang}] rows {} · accuracy {:.4} · coverage {:.4} · accuracy@threshold {:.4}",
                r.rows, r.accuracy, r.coverage, r.accuracy_at_threshold
            )?;
            if let Some(oos) = r.oos_recall {
                write!(f, " · out-of-scope recall {oos:.4}")?;
            }
        }
        if !self.most_confused.is_empty() {
            write!(f, "\nmost confused (expected → predicted):")?;
            for c in &self.most_confused {
                write!(f, "\n  {:>3}  {} → {}", c.count, c.expected, c.predicted)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(e: &str, p: &str, answered: bool) -> Outcome {
        Outcome {
            expected: e.into(),
            predicted: p.into(),
            answered,
            micros: 10.0,
            lang: "en".into(),
            first_stage: None,
        }
    }

    #[test]
    fn the_first_stage_share_is_reported_only_for_a_model_with_one() {
        let mut rows = vec![o("a", "a", true), o("a", "b", true), o("c", "c", true)];
        let r = report(&rows, "out_of_scope", 0.5);
        assert_eq!(r.first_stage_share, None);
        assert!(!r.to_string().contains("first stage"));
        for (row, took) in rows.iter_mut().zip([true, false, true]) {
            row.first_stage = Some(took);
        }
        let r = report(&rows, "out_of_scope", 0.5);
        assert!((r.first_stage_share.unwrap() - 2.0 / 3.0).abs() < 1e-9);
        assert!(
            r.to_string().contains("first stage            66.7 %"),
            "{r}"
        );
    }

    #[test]
    fn per_language_and_most_confused() {
        let mut rows = vec![
            o("a", "b", true),
            o("a", "b", true),
            o("c", "a", true),
            o("a", "a", true),
        ];
        let mut zh = o("a", "a", true);
        zh.lang = "zh".into();
        rows.push(zh);
        let mut zh_wrong = o("c", "b", true);
        zh_wrong.lang = "zh".into();
        rows.push(zh_wrong);
        let r = report(&rows, "out_of_scope", 0.5);
        assert_eq!(r.by_language.len(), 2);
        assert!((r.by_language["en"].accuracy - 0.25).abs() < 1e-9);
        assert!((r.by_language["zh"].accuracy - 0.5).abs() < 1e-9);
        assert_eq!(
            r.most_confused[0],
            Confusion {
                expected: "a".into(),
                predicted: "b".into(),
                count: 2
            }
        );
        assert_eq!(r.most_confused.len(), 3);
        let text = r.to_string();
        assert!(text.contains("[zh] rows 2"), "{text}");
        assert!(text.contains("2  a → b"), "{text}");
        // One language only: no breakdown.
        assert!(
            report(&rows[..4], "out_of_scope", 0.5)
                .by_language
                .is_empty()
        );
    }

    #[test]
    fn metrics_by_hand() {
        let rows = vec![
            o("a", "a", true),
            o("a", "b", true),
            o("b", "b", false),
            o("out_of_scope", "a", false),
            o("out_of_scope", "a", true),
        ];
        let r = report(&rows, "out_of_scope", 0.5);
        assert_eq!(r.in_scope_rows, 3);
        // a, b right (2) + one OOS not answered = 3 / 5
        assert!((r.accuracy - 0.6).abs() < 1e-9);
        // answered & right: only the first; plus one OOS = 2 / 5
        assert!((r.accuracy_at_threshold - 0.4).abs() < 1e-9);
        assert!((r.coverage - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(r.oos_recall, Some(0.5));
        // F1(a) = 2*1/(2+0+1) = 2/3; F1(b) = 2*1/(2+1+0) = 2/3
        assert!((r.macro_f1 - 2.0 / 3.0).abs() < 1e-9);
        let mut timed = rows.clone();
        timed[0].micros = 60.0; // 60 + 4 × 10 over 5 rows
        assert!((report(&timed, "out_of_scope", 0.5).latency_mean_us - 20.0).abs() < 1e-9);
    }

    #[test]
    fn bad_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.csv");
        std::fs::write(&p, "a,b\n1,2\n").unwrap();
        assert!(matches!(read_rows(&p), Err(EvalError::Columns { .. })));
        std::fs::write(&p, "text,category\n").unwrap();
        assert!(matches!(read_rows(&p), Err(EvalError::Empty { .. })));
        std::fs::write(&p, "text,category\n\"hi, there\",greeting\n").unwrap();
        assert_eq!(
            read_rows(&p).unwrap(),
            vec![("hi, there".to_string(), "greeting".to_string())]
        );
        assert!(matches!(
            read_rows(&dir.path().join("none.csv")),
            Err(EvalError::Read { .. })
        ));
    }
}
