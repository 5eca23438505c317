//! The controller's key pair, kept in `<data_dir>/controller.key` (0600).

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
    edgedesk_support::secret::write_private(path, hex::encode(secret).as_bytes())?;
    Ok(secret)
}
