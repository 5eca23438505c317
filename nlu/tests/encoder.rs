//! The multilingual bundle (n-gram features plus the int8 multilingual-e5
//! encoder) through the node's own tokenizer and the real ONNX Runtime.
//! `scripts/provision.sh` trains it into `build/models/multilingual` and
//! writes `parity.jsonl` beside it: what the training side's ONNX graph said
//! for 400 validation texts, tokenised in Python.

use std::path::PathBuf;

use edgedesk_nlu::{Model, NluError, runtime};

fn bundle_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../build/models/multilingual");
    assert!(
        dir.join("manifest.json").exists(),
        "no multilingual bundle at {}; run scripts/provision.sh first",
        dir.display()
    );
    dir
}

/// The training side's answers (`parity.jsonl`): text, label, confidence.
fn parity() -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(bundle_dir().join("../multilingual-parity.jsonl")).unwrap();
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

fn model() -> Model {
    let ort = std::env::var("ORT_DYLIB_PATH")
        .expect("ORT_DYLIB_PATH must point at libonnxruntime (source build/env.sh)");
    runtime::init(std::path::Path::new(&ort)).expect("ONNX Runtime loads");
    Model::load_checked(&bundle_dir(), 1, 0.0)
        .expect("the multilingual bundle loads and passes its golden set")
}

#[test]
fn the_node_gives_the_training_sides_answers() {
    let m = model();
    let mut n = 0;
    for want in parity() {
        let t = want["text"].as_str().unwrap();
        let p = m.classify(t).unwrap();
        assert_eq!(p.label, want["label"].as_str().unwrap(), "{t}");
        let c = want["confidence"].as_f64().unwrap() as f32;
        assert!(
            (p.confidence - c).abs() < 2e-3,
            "{t}: {} against {c}",
            p.confidence
        );
        n += 1;
    }
    assert_eq!(n, 400);
}

/// Each text gets its intent and an answer (it clears the threshold).
fn assert_answered(m: &Model, cases: &[(&str, &str)]) {
    for &(text, want) in cases {
        let p = m.classify(text).unwrap();
        assert_eq!(p.label, want, "{text}: {p:?}");
        assert!(p.answered, "{text}: {p:?}");
    }
}

#[test]
fn chinese_visitors_are_understood() {
    let m = model();
    // The phrasings issue 12 found misunderstood, and more the way mainland
    // customers type.
    assert_answered(
        &m,
        &[
            ("营业时间是几点", "branch_hours"),
            ("What time do you open?", "branch_hours"),
            ("我忘记密码了", "passcode_forgotten"),
            ("我的银行卡被偷了", "lost_or_stolen_card"),
            ("卡被ATM吞了怎么办", "card_swallowed"),
            ("快递员一直没送卡来", "card_arrival"),
            ("我要人工服务", "human_agent"),
            ("汇率是多少", "exchange_rate"),
        ],
    );
    let p = m.classify("what's the capital of Peru").unwrap();
    assert!(!p.answered, "out of scope must not be answered: {p:?}");
}

#[test]
fn sending_money_and_checking_a_balance_get_their_own_answers() {
    let m = model();
    // Issue 12's "send money to my friend" (an answer about receiving money
    // before data/intents/everyday_banking.csv) and phrasings in no file:
    // BANKING77 has no intent for either question, so these used to come out
    // as `receiving_money` and `verify_source_of_funds`.
    assert_answered(
        &m,
        &[
            ("send money to my friend", "transfer_into_account"),
            (
                "how would I send some cash to my cousin",
                "transfer_into_account",
            ),
            ("给我表姐转点钱怎么弄", "transfer_into_account"),
            ("what's my account balance right now", "check_balance"),
            ("我想查下余额还有多少", "check_balance"),
        ],
    );
    // The failures keep their own intents.
    assert_answered(
        &m,
        &[
            (
                "I sent money to my friend but he didn't get it",
                "transfer_not_received_by_recipient",
            ),
            ("my transfer to my friend failed", "failed_transfer"),
            ("转账给朋友失败了", "failed_transfer"),
        ],
    );
}

#[test]
fn off_topic_questions_are_refused_in_both_languages() {
    let m = model();
    // None of these is in the training data (data/intents/out_of_scope.csv
    // has others like them): a visitor who takes the kiosk for a general
    // assistant must hear that it cannot help, not a banking answer.
    for text in [
        "附近哪家面馆好吃",
        "孩子咳嗽老不好吃什么药",
        "哪里可以洗车",
        "电影院今晚放什么片子",
        "帮我查一下杭州明天的天气",
        "how do I bake sourdough bread",
        "who won the tennis final yesterday",
    ] {
        let p = m.classify(text).unwrap();
        assert!(!p.answered, "{text} must be refused: {p:?}");
    }
}

#[test]
fn a_batch_of_mixed_lengths_gives_each_utterance_its_own_answer() {
    // A visitor's answer must not depend on who else typed at the same
    // moment: the int8 encoder's activation scale is per call, so the model
    // runs each text of a batch alone.
    let m = model();
    let texts: Vec<String> = [
        "hi",
        "我的卡在ATM机上被吞了，现在该怎么办才能拿回来呢",
        "",
        "🙂🙂🙂",
        &"card ".repeat(400),
        "what's the capital of Peru",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let batch = m.classify_batch(&texts).unwrap();
    for (t, b) in texts.iter().zip(&batch) {
        let one = m.classify(t).unwrap();
        assert_eq!(one.label, b.label, "{t}");
        assert!((one.confidence - b.confidence).abs() < 1e-6, "{t}");
        assert_eq!(one.first_stage, b.first_stage, "{t}");
    }
}

/// The first stage (n-gram features alone) answers only the questions it is
/// sure of, at the manifest's bar, and leaves a real share to the encoder;
/// which ones it takes is checked against the training side by
/// `the_node_gives_the_training_sides_answers`.
#[test]
fn the_first_stage_answers_only_what_it_is_sure_of() {
    let m = model();
    assert!(m.has_first_stage());
    let bar = m
        .manifest()
        .first_stage
        .as_ref()
        .expect("the multilingual bundle has a first stage")
        .min_confidence;
    let (mut taken, mut total) = (0, 0);
    for want in parity() {
        let t = want["text"].as_str().unwrap();
        let p = m.classify(t).unwrap();
        total += 1;
        if p.first_stage {
            taken += 1;
            assert!(p.confidence >= bar, "{t}: {p:?}");
            assert!(
                p.answered,
                "{t}: what the first stage takes is answered: {p:?}"
            );
        }
    }
    // These texts were trained on in the shipped model's refit, so the
    // first stage is surer of them than of a new question (on unseen
    // validation rows it takes about half: the manifest's share_inscope);
    // both paths must still be taken.
    assert!(
        taken >= total / 5 && taken < total,
        "the first stage took {taken} of {total}"
    );
    // A question the n-gram features are unsure of goes on to the encoder,
    // which gets it right.
    let p = m.classify("充值没成功钱却扣了").unwrap();
    assert!(!p.first_stage, "{p:?}");
    assert_eq!(p.label, "top_up_failed", "{p:?}");
}

/// An operator's threshold above the first stage's bar raises the bar: the
/// first stage never takes a question it would then turn away, which the
/// full model might have answered.
#[test]
fn a_higher_threshold_raises_the_first_stages_bar() {
    let _ = model();
    let m = Model::load(&bundle_dir(), 1, 0.97).unwrap();
    let mut taken = 0;
    for want in parity() {
        let t = want["text"].as_str().unwrap();
        let p = m.classify(t).unwrap();
        if p.first_stage {
            taken += 1;
            assert!(p.answered && p.confidence >= 0.97, "{t}: {p:?}");
        }
    }
    assert!(
        taken > 0,
        "the first stage still takes the surest questions"
    );
}

#[test]
fn a_broken_tokenizer_file_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(bundle_dir()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), tmp.path().join(entry.file_name())).unwrap();
    }
    std::fs::write(tmp.path().join("tokenizer.json"), b"{\"format\":\"other\"}").unwrap();
    // Fix the hash so that only the content is wrong.
    let manifest_path = tmp.path().join("manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest_path).unwrap()).unwrap();
    manifest["files"]["tokenizer.json"] =
        edgedesk_nlu::bundle::sha256_file(&tmp.path().join("tokenizer.json"))
            .unwrap()
            .into();
    std::fs::write(&manifest_path, manifest.to_string()).unwrap();
    let _ = model();
    let err = Model::load(tmp.path(), 1, 0.0).unwrap_err();
    assert!(matches!(err, NluError::Tokenizer(_)), "{err}");
    assert!(err.to_string().contains("tokenizer file"), "{err}");
}

/// The figures the trainer measured on its validation split before the
/// refit (the manifest's `metrics`) hold issue 12's targets where they are
/// met, and the English floor where they are not (0.94 is the target,
/// 0.913 the figure: docs/MODEL.md). A change to the data or the trainer
/// that loses ground fails here, before a fleet gets the bundle.
#[test]
fn the_validation_figures_hold_the_targets_that_are_met() {
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle_dir().join("manifest.json")).unwrap())
            .unwrap();
    let m = &manifest["metrics"];
    let figure = |k: &str| {
        m[k].as_f64()
            .unwrap_or_else(|| panic!("the manifest has no {k}"))
    };
    assert!(figure("validation_accuracy_zh") >= 0.90, "{m}");
    assert!(figure("validation_coverage") >= 0.95, "{m}");
    assert!(figure("validation_oos_recall") >= 0.92, "{m}");
    assert!(figure("validation_oos_recall_zh") >= 0.92, "{m}");
    assert!(figure("validation_accuracy_en") >= 0.90, "{m}");
    assert!(figure("validation_rows_zh") >= 500.0, "{m}");
    // The encoder's top layers tuned on the intents (scripts/e5_finetune.py)
    // took BANKING77 from 0.917 to 0.925 on this split; a bundle built
    // without them, or losing the gain, fails here.
    let mut tuned: Vec<u32> = m["encoder_tuned"]
        .as_array()
        .unwrap_or_else(|| panic!("the manifest has no encoder_tuned: {m}"))
        .iter()
        .map(|l| {
            l.as_str()
                .and_then(|l| l.strip_prefix('l')?.parse().ok())
                .unwrap()
        })
        .collect();
    tuned.sort_unstable();
    assert_eq!(tuned, [9, 10, 11], "{m}");
    assert!(figure("validation_accuracy_banking77") >= 0.92, "{m}");
    // The figures above are the cascade's; the first stage may cost each of
    // them at most half a point against the full model on every row.
    let without = &m["first_stage"]["without_it"];
    for (with, alone) in [
        ("validation_accuracy_en", "en"),
        ("validation_accuracy_zh", "zh"),
        ("validation_accuracy_banking77", "banking77"),
        ("validation_coverage", "coverage"),
        ("validation_oos_recall", "oos_recall"),
    ] {
        let alone = without[alone]
            .as_f64()
            .unwrap_or_else(|| panic!("no first_stage.without_it.{alone}: {m}"));
        assert!(figure(with) >= alone - 0.0051, "{with}: {m}");
    }
}
