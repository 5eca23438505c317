//! The Rust tokenizer against the training side's (scripts/e5_encoder.py)
//! on 1,000 strings: English and Chinese customer queries and odd input
//! (full-width forms, emoji, runs of spaces, long runs), over the full
//! multilingual-e5 vocabulary. Both must give the same ids, or the model
//! sees different input on the node than in training.

use std::path::PathBuf;

use edgedesk_nlu::tokenizer::Unigram;

fn e5_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../build/models/e5");
    assert!(
        dir.join("parity.jsonl").exists(),
        "no {}: run scripts/provision.sh",
        dir.display()
    );
    dir
}

#[test]
fn same_ids_as_the_training_side_on_1000_strings() {
    let dir = e5_dir();
    let t = Unigram::from_json(&std::fs::read(dir.join("tokenizer.json")).unwrap()).unwrap();
    assert_eq!(t.len(), 250_002);
    let text = std::fs::read_to_string(dir.join("parity.jsonl")).unwrap();
    let mut checked = 0;
    let mut zh = 0;
    let mut mismatches = Vec::new();
    for line in text.lines() {
        let row: serde_json::Value = serde_json::from_str(line).unwrap();
        let s = row["text"].as_str().unwrap();
        let want: Vec<u32> = serde_json::from_value(row["ids"].clone()).unwrap();
        let got = t.content(s);
        if got != want {
            mismatches.push(format!("{s:?}: want {want:?}, got {got:?}"));
        }
        checked += 1;
        zh += usize::from(s.chars().any(|c| ('\u{4e00}'..='\u{9fff}').contains(&c)));
    }
    assert_eq!(checked, 1000);
    assert!(zh >= 400, "{zh} Chinese strings");
    assert!(
        mismatches.is_empty(),
        "{} of 1000 differ:\n{}",
        mismatches.len(),
        mismatches[..mismatches.len().min(10)].join("\n")
    );
}
