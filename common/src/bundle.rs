//! Model bundle manifest (`manifest.json`), format 1. See docs/MODEL.md.
//!
//! A bundle is a folder holding the manifest, `model.onnx` and `golden.jsonl`
//! (and, for a model with a sentence encoder, `tokenizer.json`).
//! This module only parses and checks the manifest's own consistency; hashing
//! files and running the golden set happen where the bytes and runtime are.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub const MANIFEST_FILE: &str = "manifest.json";
pub const MODEL_FILE: &str = "model.onnx";
pub const GOLDEN_FILE: &str = "golden.jsonl";
/// The encoder's vocabulary (`input_kind` [`INPUT_TEXT_TOKENS`]).
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// The model reads raw text only (a `[N,1]` string tensor).
pub const INPUT_TEXT: &str = "text";
/// The model reads raw text and the same text as token ids (`input_ids`,
/// int64 `[N,T]`) with its `mask` (float `[N,T]`, 1 for a token, 0 for
/// padding), tokenised with the bundle's `tokenizer.json` as [`TokenSpec`] says.
pub const INPUT_TEXT_TOKENS: &str = "text+tokens";
pub const BUNDLE_FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub name: String,
    pub version: semver::Version,
    /// RFC 3339 UTC timestamp.
    pub created_at: String,
    /// [`INPUT_TEXT`] or [`INPUT_TEXT_TOKENS`].
    pub input_kind: String,
    #[serde(default = "default_inputs")]
    pub inputs: BTreeMap<String, String>,
    #[serde(default = "default_outputs")]
    pub outputs: BTreeMap<String, String>,
    /// Class labels in the column order of the probabilities output.
    pub labels: Vec<String>,
    #[serde(default = "default_oos")]
    pub out_of_scope_label: String,
    /// Below this top probability the node does not answer with an intent.
    pub confidence_threshold: f32,
    /// sha256 (lowercase hex) of every other file in the bundle.
    pub files: BTreeMap<String, String>,
    #[serde(default)]
    pub metrics: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    pub training: BTreeMap<String, serde_json::Value>,
    /// How text becomes token ids; required by [`INPUT_TEXT_TOKENS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<TokenSpec>,
    /// A cheaper model that answers alone the questions it is sure of, so
    /// that the main model runs only on the rest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_stage: Option<FirstStage>,
}

/// The first stage of a cascade: an ONNX graph with the main model's `text`
/// input and `probabilities` output over the same labels. Where its top
/// probability is at least `min_confidence` and its top label is not out of
/// scope, its probabilities are the answer; elsewhere the main model's are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FirstStage {
    pub file: String,
    pub min_confidence: f32,
}

/// Tokenisation of a bundle with a sentence encoder: the ids are `bos`,
/// the pieces of `prefix` + text (at most `max_tokens` − 2), `eos`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenSpec {
    #[serde(default)]
    pub prefix: String,
    pub max_tokens: usize,
}

fn default_inputs() -> BTreeMap<String, String> {
    BTreeMap::from([("text".into(), "text".into())])
}

fn default_outputs() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("label".into(), "label".into()),
        ("probabilities".into(), "probabilities".into()),
    ])
}

fn default_oos() -> String {
    "out_of_scope".into()
}

/// A line of `golden.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GoldenItem {
    pub text: String,
    pub label: String,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ManifestError {
    #[error("manifest is not valid JSON for format {BUNDLE_FORMAT}: {0}")]
    Parse(String),
    #[error("unsupported bundle format {0} (this build reads format {BUNDLE_FORMAT})")]
    Format(u32),
    #[error("unsupported input kind {0:?} (this build reads \"text\" and \"text+tokens\")")]
    InputKind(String),
    #[error("input kind \"text+tokens\" needs {0}")]
    Tokens(&'static str),
    #[error("first_stage: {0}")]
    FirstStage(&'static str),
    #[error("confidence_threshold {0} is outside 0..1")]
    Threshold(f32),
    #[error("manifest lists no labels")]
    NoLabels,
    #[error("manifest does not list the required file {0}")]
    MissingFile(&'static str),
    #[error("file name {0:?} is not a plain file name")]
    BadFileName(String),
    #[error("sha256 of {0} is not 64 hex digits")]
    BadHash(String),
}

/// A bundle file name: letters, digits, `.`, `_`, `-`, not starting with a dot
/// (so never a path, never hidden).
pub fn plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

impl Manifest {
    pub fn parse(json: &str) -> Result<Manifest, ManifestError> {
        let m: Manifest =
            serde_json::from_str(json).map_err(|e| ManifestError::Parse(e.to_string()))?;
        m.validate()?;
        Ok(m)
    }

    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.format != BUNDLE_FORMAT {
            return Err(ManifestError::Format(self.format));
        }
        match self.input_kind.as_str() {
            INPUT_TEXT => {}
            INPUT_TEXT_TOKENS => {
                let spec = self
                    .tokens
                    .as_ref()
                    .ok_or(ManifestError::Tokens("a \"tokens\" section"))?;
                if !(3..=512).contains(&spec.max_tokens) {
                    return Err(ManifestError::Tokens("tokens.max_tokens between 3 and 512"));
                }
                if !self.files.contains_key(TOKENIZER_FILE) {
                    return Err(ManifestError::MissingFile(TOKENIZER_FILE));
                }
                for input in ["input_ids", "mask"] {
                    if !self.inputs.contains_key(input) {
                        return Err(ManifestError::Tokens("inputs input_ids and mask"));
                    }
                }
            }
            other => return Err(ManifestError::InputKind(other.to_owned())),
        }
        if !(self.confidence_threshold > 0.0 && self.confidence_threshold < 1.0) {
            return Err(ManifestError::Threshold(self.confidence_threshold));
        }
        if self.labels.is_empty() {
            return Err(ManifestError::NoLabels);
        }
        if let Some(first) = &self.first_stage {
            if first.file == MODEL_FILE || !self.files.contains_key(&first.file) {
                return Err(ManifestError::FirstStage(
                    "its file must be listed in files and differ from model.onnx",
                ));
            }
            // At or above the threshold: what the first stage answers is
            // answered, so it never turns a question away on its own.
            if !(first.min_confidence >= self.confidence_threshold && first.min_confidence < 1.0) {
                return Err(ManifestError::FirstStage(
                    "min_confidence must be at least confidence_threshold and below 1",
                ));
            }
        }
        for required in [MODEL_FILE, GOLDEN_FILE] {
            if !self.files.contains_key(required) {
                return Err(ManifestError::MissingFile(required));
            }
        }
        for (name, hash) in &self.files {
            if !plain_file_name(name) || name == MANIFEST_FILE {
                return Err(ManifestError::BadFileName(name.clone()));
            }
            if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ManifestError::BadHash(name.clone()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> String {
        let h = "a".repeat(64);
        format!(
            r#"{{"format":1,"name":"m","version":"1.2.3","created_at":"2026-01-01T00:00:00Z",
            "input_kind":"text","labels":["a","b"],"confidence_threshold":0.4,
            "files":{{"model.onnx":"{h}","golden.jsonl":"{h}"}}}}"#
        )
    }

    #[test]
    fn parses_and_defaults() {
        let m = Manifest::parse(&sample()).unwrap();
        assert_eq!(m.version, semver::Version::new(1, 2, 3));
        assert_eq!(m.outputs["probabilities"], "probabilities");
        assert_eq!(m.out_of_scope_label, "out_of_scope");
    }

    #[test]
    fn first_stage_must_name_a_listed_file_and_a_bar_above_the_threshold() {
        let h = "b".repeat(64);
        let with = |file: &str, bar: &str| {
            sample().replace(
                "\"files\":{",
                &format!(
                    "\"first_stage\":{{\"file\":\"{file}\",\"min_confidence\":{bar}}},\"files\":{{\"first_stage.onnx\":\"{h}\","
                ),
            )
        };
        let m = Manifest::parse(&with("first_stage.onnx", "0.85")).unwrap();
        assert_eq!(
            m.first_stage,
            Some(FirstStage {
                file: "first_stage.onnx".into(),
                min_confidence: 0.85
            })
        );
        let file_error = Err(ManifestError::FirstStage(
            "its file must be listed in files and differ from model.onnx",
        ));
        assert_eq!(Manifest::parse(&with("fast.onnx", "0.85")), file_error);
        assert_eq!(Manifest::parse(&with("model.onnx", "0.85")), file_error);
        let bar_error = Err(ManifestError::FirstStage(
            "min_confidence must be at least confidence_threshold and below 1",
        ));
        assert_eq!(Manifest::parse(&with("first_stage.onnx", "0.3")), bar_error);
        assert_eq!(Manifest::parse(&with("first_stage.onnx", "1.0")), bar_error);
        // A manifest without one has none.
        assert_eq!(Manifest::parse(&sample()).unwrap().first_stage, None);
    }

    #[test]
    fn rejects_inconsistent_manifests() {
        let s = sample();
        assert!(matches!(
            Manifest::parse(&s.replace("\"format\":1", "\"format\":9")),
            Err(ManifestError::Format(9))
        ));
        assert!(matches!(
            Manifest::parse(&s.replace("0.4", "1.5")),
            Err(ManifestError::Threshold(_))
        ));
        assert!(matches!(
            Manifest::parse(&s.replace("model.onnx", "../model.onnx")),
            Err(ManifestError::MissingFile(_))
        ));
        assert!(matches!(
            Manifest::parse(&s.replace("\"1.2.3\"", "\"one\"")),
            Err(ManifestError::Parse(_))
        ));
        assert!(matches!(
            Manifest::parse(&s.replace("[\"a\",\"b\"]", "[]")),
            Err(ManifestError::NoLabels)
        ));
    }

    #[test]
    fn an_encoder_bundle_names_its_tokenizer_and_token_inputs() {
        let h = "a".repeat(64);
        let with_tokens = sample()
            .replace("\"input_kind\":\"text\"", "\"input_kind\":\"text+tokens\"")
            .replace(
                "\"golden.jsonl\":",
                &format!("\"tokenizer.json\":\"{h}\",\"golden.jsonl\":"),
            )
            .replace(
                "\"labels\"",
                r#""inputs":{"text":"text","input_ids":"input_ids","mask":"mask"},
                   "tokens":{"prefix":"query: ","max_tokens":128},"labels""#,
            );
        let m = Manifest::parse(&with_tokens).unwrap();
        assert_eq!(m.tokens.as_ref().unwrap().prefix, "query: ");
        // Each missing piece is named.
        assert_eq!(
            Manifest::parse(&with_tokens.replace("\"tokens\"", "\"tokenz\"")),
            Err(ManifestError::Tokens("a \"tokens\" section"))
        );
        assert_eq!(
            Manifest::parse(&with_tokens.replace("\"tokenizer.json\"", "\"vocab.json\"")),
            Err(ManifestError::MissingFile(TOKENIZER_FILE))
        );
        assert_eq!(
            Manifest::parse(&with_tokens.replace("\"mask\":\"mask\"", "\"m\":\"mask\"")),
            Err(ManifestError::Tokens("inputs input_ids and mask"))
        );
        assert_eq!(
            Manifest::parse(&with_tokens.replace("128", "2")),
            Err(ManifestError::Tokens("tokens.max_tokens between 3 and 512"))
        );
        // A kind this build does not know is refused by name.
        assert_eq!(
            Manifest::parse(&sample().replace("\"text\"", "\"audio\"")),
            Err(ManifestError::InputKind("audio".into()))
        );
    }
}
