//! What a training run learns from and is checked on: the labelled samples,
//! split for good into a training part and a held-out part by a hash of
//! their id (so a sample never moves between them from run to run and the
//! evaluation set only grows), and the candidate's version.

use sha2::{Digest, Sha256};

use crate::store::trainings::LabelledSample;

/// The labels a run uses, split.
#[derive(Debug, Default, PartialEq)]
pub struct Split {
    pub train: Vec<(String, String)>,
    /// (text, label, lang)
    pub held_out: Vec<(String, String, String)>,
    /// Samples whose label is not an intent name (left out, counted).
    pub unusable: usize,
}

/// True for the share `fraction` of keys, the same ones every time.
pub fn in_share(key: &str, fraction: f64) -> bool {
    let h = Sha256::digest(key.as_bytes());
    let x = u64::from_be_bytes(h[..8].try_into().expect("8 bytes"));
    (x as f64 / u64::MAX as f64) < fraction
}

/// Whether sample `id` is held out of training for evaluation.
pub fn is_held_out(id: &str, fraction: f64) -> bool {
    in_share(id, fraction)
}

/// Whether sample `id`'s label is among those supervisors review (picked
/// independently of the held-out share).
pub fn is_reviewed(id: &str, fraction: f64) -> bool {
    in_share(&format!("review:{id}"), fraction)
}

/// The intent a label names: `new:NAME` (an intent the model lacks) is
/// NAME; anything but lower-case letters, digits and `_` is unusable.
pub fn intent_of(label: &str) -> Option<&str> {
    let name = label.strip_prefix("new:").unwrap_or(label).trim();
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    ok.then_some(name)
}

pub fn split(samples: &[LabelledSample], held_out_fraction: f64) -> Split {
    let mut s = Split::default();
    for x in samples {
        let Some(intent) = intent_of(&x.label) else {
            s.unusable += 1;
            continue;
        };
        if is_held_out(&x.id, held_out_fraction) {
            s.held_out
                .push((x.text.clone(), intent.to_owned(), x.lang.clone()));
        } else {
            s.train.push((x.text.clone(), intent.to_owned()));
        }
    }
    s
}

/// Write `rows` as the trainer's CSV (`text,category`).
pub fn write_csv(path: &std::path::Path, rows: &[(String, String)]) -> std::io::Result<()> {
    let mut w = csv::Writer::from_path(path)?;
    w.write_record(["text", "category"])?;
    for (text, category) in rows {
        w.write_record([text, category])?;
    }
    w.flush()
}

/// The candidate's version: the baseline's next minor version that no
/// release of that name has yet.
pub fn next_version(baseline: &str, taken: &[String]) -> String {
    next_free(baseline, taken, false)
}

/// A knowledge-base release's version: the baseline's next patch version
/// that no release of that name has yet (the model is the same).
pub fn next_patch(baseline: &str, taken: &[String]) -> String {
    next_free(baseline, taken, true)
}

fn next_free(baseline: &str, taken: &[String], patch_only: bool) -> String {
    let mut parts = baseline
        .split('.')
        .map(|p| p.parse::<u64>().unwrap_or(0))
        .chain(std::iter::repeat(0));
    let (major, mut minor, mut patch) = (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    );
    loop {
        if patch_only {
            patch += 1;
        } else {
            (minor, patch) = (minor + 1, 0);
        }
        let v = format!("{major}.{minor}.{patch}");
        if !taken.contains(&v) {
            return v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(id: &str, label: &str) -> LabelledSample {
        LabelledSample {
            id: id.into(),
            text: format!("text {id}"),
            lang: "en".into(),
            label: label.into(),
        }
    }

    #[test]
    fn a_knowledge_base_release_takes_the_next_free_patch_version() {
        assert_eq!(next_patch("2.0.0", &[]), "2.0.1");
        assert_eq!(next_patch("2.0.1", &["2.0.2".into()]), "2.0.3");
        assert_eq!(next_version("2.0.3", &[]), "2.1.0");
    }

    #[test]
    fn the_held_out_share_is_stable_and_near_the_fraction() {
        let ids: Vec<String> = (0..2000).map(|i| format!("ev-{i}")).collect();
        let held = ids.iter().filter(|i| is_held_out(i, 0.2)).count();
        assert!((300..500).contains(&held), "{held} of 2000");
        assert!(
            ids.iter()
                .all(|i| is_held_out(i, 0.2) == is_held_out(i, 0.2))
        );
        assert!(!ids.iter().any(|i| is_held_out(i, 0.0)));
    }

    #[test]
    fn labels_become_intents_or_are_counted_unusable() {
        assert_eq!(intent_of("new:branch_atm"), Some("branch_atm"));
        assert_eq!(intent_of("out_of_scope"), Some("out_of_scope"));
        for bad in ["", "new:", "Card Arrival", "a,b", "new:x y"] {
            assert_eq!(intent_of(bad), None, "{bad:?}");
        }
        let s = split(
            &[
                sample("a", "card_arrival"),
                sample("b", "new:branch_atm"),
                sample("c", "No Idea"),
            ],
            0.0,
        );
        assert_eq!(s.unusable, 1);
        assert_eq!(
            s.train,
            [
                ("text a".to_owned(), "card_arrival".to_owned()),
                ("text b".to_owned(), "branch_atm".to_owned())
            ]
        );
    }

    #[test]
    fn the_next_version_is_free() {
        assert_eq!(next_version("1.0.0", &[]), "1.1.0");
        assert_eq!(
            next_version("1.0.3", &["1.1.0".into(), "1.2.0".into()]),
            "1.3.0"
        );
        assert_eq!(next_version("garbage", &[]), "0.1.0");
    }

    #[test]
    fn csv_quotes_commas_and_newlines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l.csv");
        write_csv(&p, &[("hi, \"you\"\nthere".into(), "greeting".into())]).unwrap();
        let mut r = csv::Reader::from_path(&p).unwrap();
        let rec = r.records().next().unwrap().unwrap();
        assert_eq!(&rec[0], "hi, \"you\"\nthere");
        assert_eq!(&rec[1], "greeting");
    }
}
