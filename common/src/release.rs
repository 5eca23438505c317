//! Signed model releases: what the controller publishes and nodes verify.
//!
//! A [`Release`] names a bundle (`name`, `version`) and lists every file of
//! it, `manifest.json` included, with its size, sha256 and the sha256 of each
//! fixed-size chunk, so a node can check a download chunk by chunk and resume
//! from the last good chunk. The controller signs the release's exact JSON
//! text with its model-signing key (Ed25519); nodes pin that key at enrolment
//! and accept nothing else. The release id is the sha256 of that text
//! (content addressing: the same bundle always has the same id).

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

/// Chunk size for hashing and transfer (1 MiB).
pub const CHUNK_SIZE: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Release {
    pub name: String,
    pub version: semver::Version,
    /// When the controller published it (RFC 3339).
    pub published_at: String,
    /// The bundle's confidence threshold and golden-set size, for operators.
    pub confidence_threshold: f32,
    /// File name → its content.
    pub files: BTreeMap<String, FileEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    pub size: u64,
    pub sha256: String,
    /// sha256 of each `CHUNK_SIZE` piece, in order (the last may be shorter).
    pub chunks: Vec<String>,
}

impl FileEntry {
    /// Expected number of chunks for `size`.
    pub fn chunk_count(size: u64) -> usize {
        size.div_ceil(CHUNK_SIZE) as usize
    }
}

/// A release as sent to nodes: the signed JSON text and its signature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignedRelease {
    /// The exact JSON text of a [`Release`] that was signed.
    pub release: String,
    /// Base64 Ed25519 signature over `release`'s bytes.
    pub signature: String,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ReleaseError {
    #[error("release is not signed")]
    Unsigned,
    #[error("release signature does not verify with the pinned model-signing key")]
    BadSignature,
    #[error("release is malformed: {0}")]
    Malformed(String),
}

impl SignedRelease {
    pub fn sign(release: &Release, key: &SigningKey) -> SignedRelease {
        let text = serde_json::to_string(release).expect("a release serialises");
        let sig = key.sign(text.as_bytes());
        SignedRelease {
            release: text,
            signature: B64.encode(sig.to_bytes()),
        }
    }

    /// Check the signature with `key`, then parse and check the release.
    pub fn verify(&self, key: &VerifyingKey) -> Result<Release, ReleaseError> {
        if self.signature.is_empty() {
            return Err(ReleaseError::Unsigned);
        }
        let bytes = B64
            .decode(&self.signature)
            .map_err(|_| ReleaseError::BadSignature)?;
        let sig = Signature::from_slice(&bytes).map_err(|_| ReleaseError::BadSignature)?;
        key.verify_strict(self.release.as_bytes(), &sig)
            .map_err(|_| ReleaseError::BadSignature)?;
        let r: Release = serde_json::from_str(&self.release)
            .map_err(|e| ReleaseError::Malformed(e.to_string()))?;
        r.check()?;
        Ok(r)
    }
}

impl Release {
    /// Internal consistency: plain file names, a manifest and a model, hashes
    /// of the right shape, chunk counts that fit the sizes.
    pub fn check(&self) -> Result<(), ReleaseError> {
        let bad = |m: String| Err(ReleaseError::Malformed(m));
        for required in [
            crate::bundle::MANIFEST_FILE,
            crate::bundle::MODEL_FILE,
            crate::bundle::GOLDEN_FILE,
        ] {
            if !self.files.contains_key(required) {
                return bad(format!("no {required}"));
            }
        }
        let hex64 = |h: &str| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit());
        for (name, f) in &self.files {
            if !crate::bundle::plain_file_name(name) {
                return bad(format!("file name {name:?}"));
            }
            if !hex64(&f.sha256) || !f.chunks.iter().all(|c| hex64(c)) {
                return bad(format!("hashes of {name}"));
            }
            if f.chunks.len() != FileEntry::chunk_count(f.size) {
                return bad(format!(
                    "{name}: {} chunks for {} bytes",
                    f.chunks.len(),
                    f.size
                ));
            }
        }
        Ok(())
    }
}

/// A model-signing public key as published (base64), e.g. pinned at enrolment.
pub fn encode_key(key: &VerifyingKey) -> String {
    B64.encode(key.to_bytes())
}

/// Parse a base64 Ed25519 public key made by [`encode_key`].
pub fn verifying_key(b64: &str) -> Result<VerifyingKey, ReleaseError> {
    let bytes = B64
        .decode(b64)
        .map_err(|_| ReleaseError::Malformed("model key is not base64".into()))?;
    let arr: [u8; 32] = bytes
        .try_into()
        .map_err(|_| ReleaseError::Malformed("model key is not 32 bytes".into()))?;
    VerifyingKey::from_bytes(&arr).map_err(|_| ReleaseError::Malformed("model key".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release() -> Release {
        let h = "ab".repeat(32);
        let file = |size| FileEntry {
            size,
            sha256: h.clone(),
            chunks: vec![h.clone(); FileEntry::chunk_count(size)],
        };
        Release {
            name: "intents".into(),
            version: semver::Version::new(1, 2, 0),
            published_at: "2026-11-27T00:00:00Z".into(),
            confidence_threshold: 0.5,
            files: BTreeMap::from([
                ("manifest.json".into(), file(3_000)),
                ("model.onnx".into(), file(3 * CHUNK_SIZE + 1)),
                ("golden.jsonl".into(), file(0)),
            ]),
        }
    }

    #[test]
    fn signed_by_the_pinned_key_only() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let other = SigningKey::from_bytes(&[8; 32]);
        let signed = SignedRelease::sign(&release(), &key);
        assert_eq!(signed.verify(&key.verifying_key()).unwrap(), release());
        assert_eq!(
            signed.verify(&other.verifying_key()),
            Err(ReleaseError::BadSignature),
            "signed by another key"
        );
        let mut tampered = signed.clone();
        tampered.release = tampered.release.replace("1.2.0", "9.2.0");
        assert_eq!(
            tampered.verify(&key.verifying_key()),
            Err(ReleaseError::BadSignature)
        );
        let unsigned = SignedRelease {
            signature: String::new(),
            ..signed.clone()
        };
        assert_eq!(
            unsigned.verify(&key.verifying_key()),
            Err(ReleaseError::Unsigned)
        );
        let pinned = encode_key(&key.verifying_key());
        assert_eq!(verifying_key(&pinned).unwrap(), key.verifying_key());
        assert!(verifying_key("not a key").is_err());
    }

    #[test]
    fn inconsistent_releases_are_refused() {
        let mut r = release();
        r.files.get_mut("model.onnx").unwrap().chunks.pop();
        assert!(matches!(r.check(), Err(ReleaseError::Malformed(_))));
        let mut r = release();
        let f = r.files.remove("model.onnx").unwrap();
        r.files.insert("../model.onnx".into(), f);
        assert!(r.check().is_err());
    }
}
