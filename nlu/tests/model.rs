//! NLU against the real default model through the real ONNX Runtime, and
//! bundle verification.

use std::path::{Path, PathBuf};

use edgedesk_nlu::eval::{self, Outcome};
use edgedesk_nlu::{Model, NluError, runtime};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The default bundle built by scripts/provision.sh.
fn bundle_dir() -> PathBuf {
    let dir = repo_root().join("build/models/default");
    assert!(
        dir.join("manifest.json").exists(),
        "no model bundle at {}; run scripts/provision.sh first",
        dir.display()
    );
    dir
}

fn ort_path() -> PathBuf {
    PathBuf::from(std::env::var("ORT_DYLIB_PATH").expect(
        "ORT_DYLIB_PATH must point at libonnxruntime (source build/env.sh after scripts/provision.sh)",
    ))
}

fn model(dir: &Path) -> Result<Model, NluError> {
    runtime::init(&ort_path()).expect("ONNX Runtime loads");
    Model::load_checked(dir, 1, 0.0)
}

fn copy_bundle(to: &Path) {
    for f in ["manifest.json", "model.onnx", "golden.jsonl"] {
        std::fs::copy(bundle_dir().join(f), to.join(f)).unwrap();
    }
}

#[test]
fn default_model_understands_english_and_chinese() {
    let m = model(&bundle_dir()).unwrap();
    for (text, want) in [
        ("I think someone stole my card", "lost_or_stolen_card"),
        ("我的银行卡被偷了", "lost_or_stolen_card"),
        ("can I speak to a real person", "human_agent"),
        ("我要人工服务", "human_agent"),
        ("你好", "greeting"),
        ("谢谢你的帮助", "thanks"),
        ("预约明天上午", "book_appointment"),
        ("my card payment was declined", "declined_card_payment"),
        ("I forgot my passcode", "passcode_forgotten"),
    ] {
        let p = m.classify(text).unwrap();
        assert_eq!(p.label, want, "{text}: {p:?}");
        assert!(p.answered, "{text}: {p:?}");
    }
    let p = m.classify("what's the capital of Peru").unwrap();
    assert!(!p.answered, "out of scope must not be answered: {p:?}");
    // Odd input never errors.
    for text in ["", "!!!", "🙂🙂🙂", &"a".repeat(3000)] {
        let p = m.classify(text).unwrap();
        assert!((0.0..=1.0).contains(&p.confidence));
    }
}

#[test]
fn probabilities_sum_to_one_and_match_manifest_labels() {
    let m = model(&bundle_dir()).unwrap();
    let p = m.probabilities("card payment declined").unwrap();
    assert_eq!(p.len(), m.manifest().labels.len());
    let sum: f32 = p.iter().sum();
    assert!((sum - 1.0).abs() < 1e-4, "{sum}");
}

#[test]
fn holdout_model_meets_the_accuracy_floor_on_validation() {
    // build/models/holdout never saw build/models/validation.csv (provision --with-holdout).
    let holdout = repo_root().join("build/models/holdout");
    assert!(
        holdout.join("manifest.json").exists(),
        "run scripts/provision.sh --with-holdout"
    );
    let m = model(&holdout).unwrap();
    let rows = eval::read_rows(&repo_root().join("build/models/validation.csv")).unwrap();
    let labels: std::collections::HashSet<String> =
        std::fs::read_to_string(repo_root().join("data/banking77/categories.json"))
            .map(|s| {
                serde_json::from_str::<Vec<String>>(&s)
                    .unwrap()
                    .into_iter()
                    .collect()
            })
            .unwrap();
    let mut all = Vec::new();
    let mut banking = Vec::new();
    for (text, category) in rows {
        let p = m.classify(&text).unwrap();
        let zh = text.chars().any(|c| ('\u{4e00}'..='\u{9fff}').contains(&c));
        let o = Outcome {
            expected: category.clone(),
            predicted: p.label,
            answered: p.answered,
            micros: 0.0,
            lang: if zh { "zh" } else { "en" }.into(),
            first_stage: None,
        };
        if labels.contains(&category) && !zh {
            banking.push(o.clone());
        }
        all.push(o);
    }
    let b = eval::report(&banking, "out_of_scope", m.threshold());
    let r = eval::report(&all, "out_of_scope", m.threshold());
    eprintln!(
        "BANKING77 (English) validation accuracy {:.4}; overall {r:?}",
        b.accuracy
    );
    // Chinese renderings of every intent (data/intents/zh_banking77*.csv):
    // 0.20 before they were written, 0.81 with them (docs/MODEL.md).
    let zh = &r.by_language["zh"];
    assert!(zh.rows >= 550, "{zh:?}");
    assert!(zh.accuracy >= 0.78, "Chinese validation accuracy {zh:?}");
    // Floor, not target: the target (>= 0.90 on held-out BANKING77) is
    // tracked in docs/MODEL.md; this guards against regressions.
    assert!(
        b.accuracy >= 0.885,
        "BANKING77 validation accuracy {:.4}",
        b.accuracy
    );
    assert!(r.oos_recall.unwrap() >= 0.85, "{r:?}");
    assert!(r.by_language["en"].macro_f1 >= 0.85, "{r:?}");
}

#[test]
fn tampered_bundle_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    copy_bundle(dir.path());
    let mut golden = std::fs::read_to_string(dir.path().join("golden.jsonl")).unwrap();
    golden.push_str("{\"text\":\"hello\",\"label\":\"goodbye\"}\n");
    std::fs::write(dir.path().join("golden.jsonl"), golden).unwrap();
    assert!(
        matches!(model(dir.path()), Err(NluError::HashMismatch { file, .. }) if file == "golden.jsonl")
    );
}

#[test]
fn bundle_failing_its_golden_set_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    copy_bundle(dir.path());
    // A wrong expectation, with the hash updated so only the golden run can catch it.
    let golden = std::fs::read_to_string(dir.path().join("golden.jsonl")).unwrap();
    let golden = golden.replacen("\"label\": \"greeting\"", "\"label\": \"goodbye\"", 1);
    assert!(golden.contains("goodbye"));
    std::fs::write(dir.path().join("golden.jsonl"), &golden).unwrap();
    let hash = edgedesk_nlu::bundle::sha256_file(&dir.path().join("golden.jsonl")).unwrap();
    let manifest = std::fs::read_to_string(dir.path().join("manifest.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&manifest).unwrap();
    v["files"]["golden.jsonl"] = serde_json::Value::String(hash);
    std::fs::write(dir.path().join("manifest.json"), v.to_string()).unwrap();
    let err = model(dir.path()).unwrap_err();
    assert!(matches!(err, NluError::Golden { failed: 1, .. }), "{err}");
}

#[test]
fn missing_or_malformed_bundle_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(model(dir.path()), Err(NluError::Io { .. })));
    copy_bundle(dir.path());
    std::fs::remove_file(dir.path().join("model.onnx")).unwrap();
    assert!(matches!(model(dir.path()), Err(NluError::Io { .. })));
    copy_bundle(dir.path());
    std::fs::write(dir.path().join("manifest.json"), "{\"format\": 1}").unwrap();
    assert!(matches!(model(dir.path()), Err(NluError::Manifest { .. })));
}

#[test]
fn a_batch_classifies_each_utterance_as_alone() {
    let m = model(&bundle_dir()).unwrap();
    let texts: Vec<String> = [
        "I think someone stole my card",
        "我要人工服务",
        "what's the capital of Peru",
        "",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let batch = m.classify_batch(&texts).unwrap();
    assert_eq!(batch.len(), texts.len());
    for (t, b) in texts.iter().zip(&batch) {
        let one = m.classify(t).unwrap();
        assert_eq!(one.label, b.label, "{t}");
        assert!((one.confidence - b.confidence).abs() < 1e-5, "{t}");
        assert_eq!(one.answered, b.answered, "{t}");
    }
    assert!(m.classify_batch(&[]).unwrap().is_empty());
}

#[test]
fn a_model_runs_its_golden_set_once_per_checked_load() {
    // Before, `Model::load` ran it and callers ran it again.
    runtime::init(&ort_path()).expect("ONNX Runtime loads");
    let before = edgedesk_nlu::model::golden_runs();
    let m = Model::load(&bundle_dir(), 1, 0.0).unwrap();
    assert_eq!(
        edgedesk_nlu::model::golden_runs(),
        before,
        "a plain load runs none"
    );
    drop(m);
    Model::load_checked(&bundle_dir(), 1, 0.0).unwrap();
    assert_eq!(edgedesk_nlu::model::golden_runs(), before + 1);
}
