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
use sha2::{Digest, Sha256};

use crate::store::{ModelRow, Store, StoreError};

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

/// Unpack a bundle sent as a tar stream (`model publish -`, for example
/// `tar -C BUNDLE -cf - . | kubectl exec -i POD -- cloud-controller model publish -`)
/// into the empty folder `dest`, and return the bundle's folder: `dest`, or
/// its one subfolder when the archive holds the bundle's folder itself.
/// Only plain files and folders with relative paths are taken: an absolute
/// path, a `..`, a link or a device is refused by name, and so is an archive
/// larger than `max_bytes` unpacked.
pub fn unpack_bundle_tar(
    reader: impl Read,
    dest: &Path,
    max_bytes: u64,
) -> Result<PathBuf, ModelError> {
    use std::path::Component;
    let bad = |m: String| ModelError::Invalid(m);
    let mut archive = tar::Archive::new(reader);
    let mut total: u64 = 0;
    let mut files = 0usize;
    for entry in archive
        .entries()
        .map_err(|e| bad(format!("not a tar archive: {e}")))?
    {
        let mut entry = entry.map_err(|e| bad(format!("not a tar archive: {e}")))?;
        let raw = entry
            .path()
            .map_err(|e| bad(format!("tar entry with an unreadable name: {e}")))?
            .into_owned();
        let mut rel = PathBuf::new();
        for c in raw.components() {
            match c {
                Component::Normal(part) => rel.push(part),
                Component::CurDir => {}
                _ => {
                    return Err(bad(format!(
                        "tar entry {}: only relative paths without `..` are taken",
                        raw.display()
                    )));
                }
            }
        }
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            std::fs::create_dir_all(dest.join(&rel))?;
            continue;
        }
        if !kind.is_file() {
            return Err(bad(format!(
                "tar entry {}: a {kind:?}, not a plain file or folder",
                raw.display()
            )));
        }
        total = total.saturating_add(entry.header().size().unwrap_or(u64::MAX));
        if total > max_bytes {
            return Err(bad(format!(
                "the archive is larger than {} MiB unpacked",
                max_bytes >> 20
            )));
        }
        let path = dest.join(&rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut out = std::fs::File::create(&path)?;
        std::io::copy(&mut (&mut entry).take(max_bytes), &mut out)?;
        files += 1;
    }
    if files == 0 {
        return Err(bad("the archive holds no files".into()));
    }
    if dest.join(MANIFEST_FILE).exists() {
        return Ok(dest.to_owned());
    }
    let dirs: Vec<PathBuf> = std::fs::read_dir(dest)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    match dirs.as_slice() {
        [one] if one.join(MANIFEST_FILE).exists() => Ok(one.clone()),
        _ => Err(bad(format!(
            "the archive has no {MANIFEST_FILE} at its top or in its one folder"
        ))),
    }
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
pub async fn publish(
    store: &Store,
    models_dir: &Path,
    key: &SigningKey,
    bundle: &Path,
    onnxruntime: &Path,
    now: i64,
) -> Result<ModelRow, ModelError> {
    let (models_dir, bundle, onnxruntime) = (
        models_dir.to_owned(),
        bundle.to_owned(),
        onnxruntime.to_owned(),
    );
    let release =
        tokio::task::spawn_blocking(move || prepare(&models_dir, &bundle, &onnxruntime, now))
            .await
            .map_err(|e| ModelError::Io(std::io::Error::other(e.to_string())))??;
    let key_name = format!("{}@{}", release.name, release.version);
    if let Some(existing) = store
        .model(&key_name)
        .await?
        .filter(|m| m.name == release.name)
    {
        let old: Release = serde_json::from_str(&existing.signed.release)
            .map_err(|e| ModelError::Invalid(format!("stored release {}: {e}", existing.id)))?;
        if old.files == release.files {
            return Ok(existing);
        }
        return Err(ModelError::VersionExists {
            name: release.name,
            version: release.version.to_string(),
            existing: existing.id,
        });
    }
    let bytes: u64 = release.files.values().map(|f| f.size).sum();
    let signed = SignedRelease::sign(&release, key);
    let id = hex::encode(Sha256::digest(signed.release.as_bytes()));
    let row = store
        .model_insert(
            id,
            signed,
            release.name.clone(),
            release.version.to_string(),
            bytes,
            now,
        )
        .await?;
    tracing::info!(id = %row.id, name = %release.name, version = %release.version, bytes, "model published");
    Ok(row)
}

/// Check the bundle (hashes and golden set, once) and copy its files into
/// the blob store; the release to sign. Blocking.
fn prepare(
    models_dir: &Path,
    bundle: &Path,
    onnxruntime: &Path,
    now: i64,
) -> Result<Release, ModelError> {
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
    Ok(Release {
        name: manifest.name.clone(),
        version: manifest.version.clone(),
        published_at: chrono::DateTime::from_timestamp_millis(now)
            .unwrap_or_default()
            .to_rfc3339(),
        confidence_threshold: manifest.confidence_threshold,
        files,
    })
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

    /// A tar archive of `(name, entry type, contents)`, names written raw so
    /// that a hostile archive can be made too.
    fn tar_of(entries: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, data) in entries {
            let mut h = tar::Header::new_old();
            h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_entry_type(*kind);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            if *kind == tar::EntryType::Symlink {
                h.set_link_name("/etc/passwd").unwrap();
            }
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn a_bundle_tar_unpacks_at_its_top_or_in_its_one_folder() {
        use tar::EntryType::{Directory, Regular};
        let flat = tar_of(&[
            ("./", Directory, b""),
            ("./manifest.json", Regular, b"{}"),
            ("./model.onnx", Regular, b"onnx"),
        ]);
        let dir = tempfile::tempdir().unwrap();
        let got = unpack_bundle_tar(&flat[..], dir.path(), 1 << 20).unwrap();
        assert_eq!(got, dir.path());
        assert_eq!(std::fs::read(got.join("model.onnx")).unwrap(), b"onnx");
        let nested = tar_of(&[
            ("intents-2/", Directory, b""),
            ("intents-2/manifest.json", Regular, b"{}"),
        ]);
        let dir = tempfile::tempdir().unwrap();
        let got = unpack_bundle_tar(&nested[..], dir.path(), 1 << 20).unwrap();
        assert_eq!(got, dir.path().join("intents-2"));
    }

    #[test]
    fn a_hostile_or_wrong_tar_is_refused_by_name() {
        use tar::EntryType::{Regular, Symlink};
        let big = vec![0u8; 4096];
        let cases: [(&str, Vec<u8>, &str); 6] = [
            ("dot-dot", tar_of(&[("../evil", Regular, b"x")]), "`..`"),
            (
                "absolute",
                tar_of(&[("/etc/evil", Regular, b"x")]),
                "relative",
            ),
            (
                "symlink",
                tar_of(&[("manifest.json", Symlink, b"")]),
                "Symlink",
            ),
            (
                "too large",
                tar_of(&[("model.onnx", Regular, &big)]),
                "larger than",
            ),
            (
                "no manifest",
                tar_of(&[("model.onnx", Regular, b"x")]),
                "manifest.json",
            ),
            (
                "not a tar",
                b"this is not an archive at all".repeat(30),
                "not a tar",
            ),
        ];
        for (case, bytes, expect) in cases {
            let dir = tempfile::tempdir().unwrap();
            let e = unpack_bundle_tar(&bytes[..], dir.path(), 1024).unwrap_err();
            assert!(e.to_string().contains(expect), "{case}: {e}");
        }
        // Nothing escaped the folder it was given.
        let parent = tempfile::tempdir().unwrap();
        let inner = parent.path().join("in");
        std::fs::create_dir(&inner).unwrap();
        let _ = unpack_bundle_tar(&tar_of(&[("../evil", Regular, b"x")])[..], &inner, 1024);
        assert!(!parent.path().join("evil").exists());
    }
}
