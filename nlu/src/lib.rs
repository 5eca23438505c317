//! Natural-language understanding: intents from an ONNX model bundle,
//! entities from rules. Used by the edge node, and by the controller only
//! to run a bundle's golden set at `model publish`.
//!
//! - [`bundle`]: a bundle's manifest and file hashes, checked without ONNX.
//! - [`runtime`] (feature `onnx`): finds and initialises ONNX Runtime once.
//! - [`model`] (feature `onnx`): loads a verified bundle into a small pool of
//!   sessions and classifies text; [`ActiveModel`] is the swappable handle.
//! - [`entities`]: dates, times, amounts, phone numbers, card digits, e-mail;
//!   usable without ONNX Runtime.
//! - [`mask`]: the one function that masks personal data in text that
//!   leaves the branch.
//! - [`eval`]: the metrics behind `edge-node nlu eval`.

pub mod bundle;
pub mod entities;
pub mod eval;
pub mod mask;
#[cfg(feature = "onnx")]
pub mod model;
#[cfg(feature = "onnx")]
pub mod runtime;
pub mod tokenizer;

#[cfg(feature = "onnx")]
pub use model::{ActiveModel, Model, Prediction};

use std::path::PathBuf;

/// Errors of the NLU layer.
#[derive(Debug, thiserror::Error)]
pub enum NluError {
    /// The ONNX Runtime library is missing or unusable; the message names the fix.
    #[error("{0}")]
    Runtime(String),
    /// The bundle folder or one of its files cannot be read.
    #[error("cannot read model bundle file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The manifest is malformed or inconsistent.
    #[error("model bundle manifest {path}: {source}")]
    Manifest {
        path: PathBuf,
        source: edgedesk_common::bundle::ManifestError,
    },
    /// A file's sha256 differs from the manifest (tampered or corrupted).
    #[error("model bundle file {file} has sha256 {actual}, manifest says {expected}")]
    HashMismatch {
        file: String,
        expected: String,
        actual: String,
    },
    /// The golden set did not come out as the manifest expects.
    #[error("model bundle failed its golden set ({failed} of {total} wrong), first: {first}")]
    Golden {
        failed: usize,
        total: usize,
        first: String,
    },
    /// ONNX Runtime refused the model or failed while running it.
    #[error("ONNX Runtime: {0}")]
    Onnx(String),
    /// The model's outputs do not match the manifest (labels, shapes).
    #[error("model output does not match its manifest: {0}")]
    Shape(String),
    /// The bundle's `tokenizer.json` cannot be used.
    #[error("model bundle {0}")]
    Tokenizer(#[from] tokenizer::TokenizerError),
}

#[cfg(feature = "onnx")]
impl From<ort::Error> for NluError {
    fn from(e: ort::Error) -> Self {
        NluError::Onnx(e.to_string())
    }
}
