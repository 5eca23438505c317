//! The controller's key pair, kept in `<data_dir>/controller.key` (0600).

use std::io::Write;
use std::path::Path;

use edgedesk_common::envelope::Identity;

/// Load the identity at `path`, creating it from fresh randomness if absent.
pub fn load_or_create(path: &Path) -> std::io::Result<Identity> {
    Ok(Identity::from_secret(&secret_file::<64>(path)?))
}

/// `N` secret bytes kept hex-encoded in `path` (0600), made from fresh
/// randomness the first time.
pub fn secret_file<const N: usize>(path: &Path) -> std::io::Result<[u8; N]> {
    if let Ok(text) = std::fs::read_to_string(path) {
        let bytes = hex::decode(text.trim()).map_err(std::io::Error::other)?;
        return bytes.try_into().map_err(|_| {
            std::io::Error::other(format!("{} is not a {N}-byte key", path.display()))
        });
    }
    let mut secret = [0u8; N];
    getrandom::fill(&mut secret).map_err(std::io::Error::other)?;
    write_secret(path, &hex::encode(secret))?;
    Ok(secret)
}

/// Write a secret file readable by its owner only.
pub fn write_secret(path: &Path, text: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

/// A random token of `bytes` bytes, hex-encoded.
pub fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    // The OS random source failing is unrecoverable for a security token.
    getrandom::fill(&mut buf).expect("OS random source");
    hex::encode(buf)
}
