//! Model releases on the controller: `model publish` validates a bundle
//! (manifest, file hashes, the golden set run through ONNX Runtime with the
//! node's own NLU code), signs a [`Release`] listing every file with its
//! chunk hashes using the model-signing key (`<data_dir>/model-signing.key`,
//! Ed25519, 0600), and stores the files content-addressed under
//! `<data_dir>/models/blobs/<sha256>`. Nodes download those blobs over QUIC
//! (`quic.rs`) and verify them against the signed release.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use edgedesk_common::bundle::MANIFEST_FILE;
use edgedesk_common::release::{CHUNK_SIZE, FileEntry, Release, SignedRelease};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("bundle refused: {0}")]
    Invalid(String),
    #[error(
        "{name} {version} is already published with different content (release {existing}); publish a new version"
    )]
    VersionExists {
        name: String,
        version: String,
        existing: String,
    },
    #[error("no model release {0:?}")]
    NotFound(String),
    #[error("model files: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<rusqlite::Error> for ModelError {
    fn from(e: rusqlite::Error) -> Self {
        ModelError::Store(e.into())
    }
}

pub fn migrate(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS models (
            id           TEXT PRIMARY KEY,   -- sha256 of the signed release text
            name         TEXT NOT NULL,
            version      TEXT NOT NULL,
            signed       TEXT NOT NULL,      -- SignedRelease as JSON
            bytes        INTEGER NOT NULL,
            published_at INTEGER NOT NULL,
            UNIQUE (name, version)
        );",
    )?;
    Ok(())
}

/// A published release as listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ModelRow {
    pub id: String,
    pub name: String,
    pub version: String,
    /// Total bytes of its files.
    pub bytes: u64,
    pub published_at: i64,
    #[schema(value_type = Object)]
    pub signed: SignedRelease,
}

/// Load the model-signing key at `path`, creating it if absent.
pub fn signing_key(path: &Path) -> std::io::Result<SigningKey> {
    Ok(SigningKey::from_bytes(&crate::identity::secret_file::<32>(
        path,
    )?))
}

/// Where blob `sha256` lives, if the name is a well-formed hash.
pub fn blob_path(models_dir: &Path, sha256: &str) -> Option<PathBuf> {
    (sha256.len() == 64
        && sha256
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
    .then(|| models_dir.join("blobs").join(sha256))
}

/// Size, sha256 and chunk hashes of a file, reading it once.
pub fn describe_file(path: &Path) -> std::io::Result<FileEntry> {
    let mut f = std::fs::File::open(path)?;
    let mut whole = Sha256::new();
    let mut chunks = Vec::new();
    let mut buf = vec![0u8; CHUNK_SIZE as usize];
    let mut size = 0u64;
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            let n = f.read(&mut buf[filled..])?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        whole.update(&buf[..filled]);
        chunks.push(hex::encode(Sha256::digest(&buf[..filled])));
        size += filled as u64;
        if filled < buf.len() {
            break;
        }
    }
    Ok(FileEntry {
        size,
        sha256: hex::encode(whole.finalize()),
        chunks,
    })
}

/// Validate `bundle` (hashes, then the golden set in ONNX Runtime at
/// `onnxruntime`, which may be empty to use `ORT_DYLIB_PATH`), sign it and
/// store it. Publishing the same bundle again returns the existing release.
pub fn publish(
    conn: &Connection,
    models_dir: &Path,
    key: &SigningKey,
    bundle: &Path,
    onnxruntime: &Path,
    now: i64,
) -> Result<ModelRow, ModelError> {
    use edgedesk_nlu as nlu;
    let invalid = |e: nlu::NluError| ModelError::Invalid(e.to_string());
    nlu::runtime::init(onnxruntime).map_err(invalid)?;
    let model = nlu::Model::load_checked(bundle, 1, 0.0).map_err(invalid)?;
    let manifest = model.manifest().clone();
    drop(model);
    let mut names: Vec<String> = manifest.files.keys().cloned().collect();
    names.push(MANIFEST_FILE.to_owned());
    let blobs = models_dir.join("blobs");
    std::fs::create_dir_all(&blobs)?;
    let mut files = std::collections::BTreeMap::new();
    for name in names {
        let src = bundle.join(&name);
        let entry = describe_file(&src)?;
        let dest = blobs.join(&entry.sha256);
        if !dest.exists() {
            // Write under a temporary name, then rename: a crash never leaves
            // a partial blob under a hash name.
            let tmp = blobs.join(format!(".{}.tmp", entry.sha256));
            {
                let mut out = std::fs::File::create(&tmp)?;
                std::io::copy(&mut std::fs::File::open(&src)?, &mut out)?;
                out.flush()?;
                out.sync_all()?;
            }
            std::fs::rename(&tmp, &dest)?;
        }
        files.insert(name, entry);
    }
    let bytes: u64 = files.values().map(|f| f.size).sum();
    let release = Release {
        name: manifest.name.clone(),
        version: manifest.version.clone(),
        published_at: chrono::DateTime::from_timestamp_millis(now)
            .unwrap_or_default()
            .to_rfc3339(),
        confidence_threshold: manifest.confidence_threshold,
        files,
    };
    let existing: Option<(String, String)> = conn
        .query_row(
            "SELECT id, signed FROM models WHERE name = ?1 AND version = ?2",
            params![manifest.name, manifest.version.to_string()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    if let Some((id, signed)) = existing {
        let signed: SignedRelease = serde_json::from_str(&signed)
            .map_err(|e| ModelError::Invalid(format!("stored release {id}: {e}")))?;
        let old: Release = serde_json::from_str(&signed.release)
            .map_err(|e| ModelError::Invalid(format!("stored release {id}: {e}")))?;
        if old.files == release.files {
            return get(conn, &id)?.ok_or(ModelError::NotFound(id));
        }
        return Err(ModelError::VersionExists {
            name: manifest.name,
            version: manifest.version.to_string(),
            existing: id,
        });
    }
    let signed = SignedRelease::sign(&release, key);
    let id = hex::encode(Sha256::digest(signed.release.as_bytes()));
    conn.execute(
        "INSERT INTO models (id, name, version, signed, bytes, published_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            id,
            release.name,
            release.version.to_string(),
            serde_json::to_string(&signed).expect("serialises"),
            bytes as i64,
            now
        ],
    )?;
    tracing::info!(%id, name = %release.name, version = %release.version, bytes, "model published");
    get(conn, &id)?.ok_or(ModelError::NotFound(id))
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ModelRow> {
    let signed: String = r.get(3)?;
    Ok(ModelRow {
        id: r.get(0)?,
        name: r.get(1)?,
        version: r.get(2)?,
        signed: serde_json::from_str(&signed).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(3, rusqlite::types::Type::Text, e.into())
        })?,
        bytes: r.get::<_, i64>(4)? as u64,
        published_at: r.get(5)?,
    })
}

pub fn list(conn: &Connection) -> Result<Vec<ModelRow>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, name, version, signed, bytes, published_at FROM models ORDER BY published_at DESC, id",
    )?;
    let rows = stmt.query_map([], row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// A release by id, or by `name@version` / bare `version` (newest name).
pub fn get(conn: &Connection, key: &str) -> Result<Option<ModelRow>, StoreError> {
    let (name, version) = match key.split_once('@') {
        Some((n, v)) => (Some(n), v),
        None => (None, key),
    };
    let mut stmt = conn.prepare_cached(
        "SELECT id, name, version, signed, bytes, published_at FROM models
         WHERE id = ?1 OR (version = ?2 AND (?3 IS NULL OR name = ?3))
         ORDER BY published_at DESC LIMIT 1",
    )?;
    Ok(stmt
        .query_row(params![key, version, name], row)
        .optional()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_hashes_cover_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let data: Vec<u8> = (0..(2 * CHUNK_SIZE + 10))
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::write(&p, &data).unwrap();
        let e = describe_file(&p).unwrap();
        assert_eq!(e.size, data.len() as u64);
        assert_eq!(e.chunks.len(), 3);
        assert_eq!(e.sha256, hex::encode(Sha256::digest(&data)));
        assert_eq!(
            e.chunks[2],
            hex::encode(Sha256::digest(&data[2 * CHUNK_SIZE as usize..]))
        );
        std::fs::write(&p, b"").unwrap();
        assert_eq!(describe_file(&p).unwrap().chunks.len(), 0);
        assert!(blob_path(dir.path(), "../etc/passwd").is_none());
        assert!(blob_path(dir.path(), &"A".repeat(64)).is_none());
    }
}
