//! Secret files (keys, tokens, identities): written to a temporary file
//! created 0600, synced, then renamed over the target, so the file is never
//! readable by others — even when it existed before with a looser mode — and
//! never half written. The replaced file's contents are then overwritten
//! with zeros and synced, so a key rotated away is not left in the freed
//! blocks of the old file (what a journalling file system or an SSD's
//! wear levelling keep elsewhere is beyond a program's reach: see
//! docs/SECURITY.md). Public material kept beside them (certificates) is
//! written the same way, with the default mode ([`write_public`]), so a
//! reader never meets it half written.

use std::io::{Seek, Write};
use std::path::Path;

/// Write `bytes` to `path` readable by its owner only, atomically.
pub fn write_private(path: &Path, bytes: impl AsRef<[u8]>) -> std::io::Result<()> {
    write_via_temporary(path, bytes.as_ref(), true)
}

/// Write `bytes` to `path` atomically with the default mode (a certificate,
/// a CA for others to trust): a reader sees the old file or the new one,
/// never an empty or half-written one.
pub fn write_public(path: &Path, bytes: impl AsRef<[u8]>) -> std::io::Result<()> {
    write_via_temporary(path, bytes.as_ref(), false)
}

fn write_via_temporary(path: &Path, bytes: &[u8], private: bool) -> std::io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(dir) = dir {
        std::fs::create_dir_all(dir)?;
    }
    let mut tmp_name = path.file_name().unwrap_or_default().to_owned();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    // Held across the rename: the replaced secret's blocks are zeroed through it.
    let replaced = if private {
        std::fs::OpenOptions::new().write(true).open(path).ok()
    } else {
        None
    };
    {
        let mut f = opts.open(&tmp)?;
        // A leftover temporary file may carry an older, looser mode.
        #[cfg(unix)]
        if private {
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        }
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = dir {
        std::fs::File::open(dir)?.sync_all()?;
    }
    if let Some(old) = replaced {
        overwrite_with_zeros(old)?;
    }
    Ok(())
}

fn overwrite_with_zeros(mut f: std::fs::File) -> std::io::Result<()> {
    let len = f.metadata()?.len();
    f.seek(std::io::SeekFrom::Start(0))?;
    let zeros = [0u8; 4096];
    let mut left = len;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        f.write_all(&zeros[..n])?;
        left -= n as u64;
    }
    f.sync_all()
}

/// A random token of `bytes` bytes, hex-encoded, from the OS random source.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    // The OS random source failing is unrecoverable for a security token.
    getrandom::fill(&mut buf).expect("OS random source");
    hex::encode(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(unix)]
    fn secrets_are_owner_only_even_over_a_looser_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/key");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&path, b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn a_replaced_secret_is_overwritten_not_just_unlinked() {
        use std::io::Read;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        write_private(&path, b"the-old-secret").unwrap();
        // Someone holding the old file (as its freed blocks would) reads zeros.
        let mut old = std::fs::File::open(&path).unwrap();
        write_private(&path, b"the-new-secret!").unwrap();
        let mut seen = Vec::new();
        old.read_to_end(&mut seen).unwrap();
        assert_eq!(seen, vec![0u8; b"the-old-secret".len()]);
        assert_eq!(std::fs::read(&path).unwrap(), b"the-new-secret!");
    }

    #[test]
    fn public_material_is_replaced_whole_never_truncated_in_place() {
        // A reader that opened the old file keeps reading the old file: the
        // new one arrives by rename, so nobody meets it empty or half
        // written (a controller's CA read as it started; systest once did).
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ca.pem");
        write_public(&p, "old certificate").unwrap();
        let mut reader = std::fs::File::open(&p).unwrap();
        write_public(&p, "new certificate").unwrap();
        let mut seen = String::new();
        std::io::Read::read_to_string(&mut reader, &mut seen).unwrap();
        assert_eq!(seen, "old certificate");
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "new certificate");
        assert!(!dir.path().join("ca.pem.tmp").exists());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            // The mode any new file gets here (the umask's), not 0600.
            let plain = dir.path().join("plain");
            std::fs::write(&plain, "x").unwrap();
            let mode = |f: &Path| std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
            assert_eq!(
                mode(&p),
                mode(&plain),
                "a certificate is for others to read"
            );
        }
    }

    #[test]
    fn random_tokens_differ() {
        let (a, b) = (random_hex(16), random_hex(16));
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
    }
}
