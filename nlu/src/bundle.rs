//! Model bundles on disk, checked without ONNX Runtime: the manifest and
//! every file's sha256. Hashing streams the file (bundles are tens of MB).

use std::io::Read;
use std::path::Path;

use edgedesk_common::bundle::{MANIFEST_FILE, Manifest};
use sha2::{Digest, Sha256};

use crate::NluError;

/// sha256 of a file as lowercase hex, read in 64 KiB pieces.
pub fn sha256_file(path: &Path) -> Result<String, NluError> {
    let io = |source| NluError::Io {
        path: path.to_owned(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Read and verify a bundle's manifest and file hashes.
pub fn verify_bundle(dir: &Path) -> Result<Manifest, NluError> {
    let manifest_path = dir.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&manifest_path).map_err(|source| NluError::Io {
        path: manifest_path.clone(),
        source,
    })?;
    let manifest = Manifest::parse(&text).map_err(|source| NluError::Manifest {
        path: manifest_path,
        source,
    })?;
    for (file, expected) in &manifest.files {
        let actual = sha256_file(&dir.join(file))?;
        if !actual.eq_ignore_ascii_case(expected) {
            return Err(NluError::HashMismatch {
                file: file.clone(),
                expected: expected.clone(),
                actual,
            });
        }
    }
    Ok(manifest)
}
