//! The controller's keys: its signing key in `<data_dir>/controller.key`
//! and its rotating sealing keys in `<data_dir>/controller.seal` (both 0600).

use std::path::Path;

use edgedesk_common::envelope::EnvelopeError;
use edgedesk_common::envelope::Identity;
use edgedesk_common::sealing::{Keyring, Recipient, SharedBox};

/// Load the identity at `path`, creating it from fresh randomness if absent.
pub fn load_or_create(path: &Path) -> std::io::Result<Identity> {
    Ok(Identity::from_secret(&secret_file::<64>(path)?))
}

/// The identity at `path`, which must exist (a standby never makes one).
pub fn load(path: &Path) -> std::io::Result<Identity> {
    Ok(Identity::from_secret(&read_secret::<64>(path)?))
}

/// `N` secret bytes kept hex-encoded in `path`.
fn read_secret<const N: usize>(path: &Path) -> std::io::Result<[u8; N]> {
    let text = std::fs::read_to_string(path)?;
    let bytes = hex::decode(text.trim()).map_err(std::io::Error::other)?;
    bytes
        .try_into()
        .map_err(|_| std::io::Error::other(format!("{} is not a {N}-byte key", path.display())))
}

/// `N` secret bytes kept hex-encoded in `path` (0600), made from fresh
/// randomness the first time.
pub fn secret_file<const N: usize>(path: &Path) -> std::io::Result<[u8; N]> {
    if path.exists() {
        return read_secret(path);
    }
    let mut secret = [0u8; N];
    getrandom::fill(&mut secret).map_err(std::io::Error::other)?;
    edgedesk_support::secret::write_private(path, hex::encode(secret).as_bytes())?;
    Ok(secret)
}

/// The controller's sealing keyring in `path` (0600), made the first time
/// from the sealing half of `identity` (stored in `key_path`), which is then
/// zeroed there: from then on the only copy of a sealing secret is the
/// keyring, which rotation rewrites (see [`edgedesk_common::sealing`]).
pub fn load_keyring(
    path: &Path,
    key_path: &Path,
    identity: &Identity,
    now_ms: i64,
) -> std::io::Result<Keyring> {
    let ring = match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            std::io::Error::other(format!("{}: not a sealing keyring: {e}", path.display()))
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let ring = Keyring::new(identity.sealing_seed(), now_ms);
            save_keyring(path, &ring)?;
            ring
        }
        Err(e) => return Err(e),
    };
    // Also after a crash between the two writes.
    if identity.secret() != identity.without_sealing() {
        edgedesk_support::secret::write_private(
            key_path,
            hex::encode(identity.without_sealing()).as_bytes(),
        )?;
    }
    Ok(ring)
}

/// Rewrite the keyring file; the replaced contents are overwritten.
pub fn save_keyring(path: &Path, ring: &Keyring) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(ring).map_err(std::io::Error::other)?;
    edgedesk_support::secret::write_private(path, json)
}

/// The controller's receiving keys (see [`edgedesk_common::sealing`]), kept
/// in `controller.seal`.
pub struct Sealing {
    ring: std::sync::RwLock<Keyring>,
    path: std::path::PathBuf,
}

impl Sealing {
    pub fn new(ring: Keyring, path: std::path::PathBuf) -> Sealing {
        Sealing {
            ring: std::sync::RwLock::new(ring),
            path,
        }
    }

    /// The keyring kept in `path`, which must exist (a standby reads the
    /// active controller's and never writes it).
    pub fn read(path: std::path::PathBuf) -> std::io::Result<Sealing> {
        let bytes = std::fs::read(&path)?;
        let ring: Keyring = serde_json::from_slice(&bytes).map_err(|e| {
            std::io::Error::other(format!("{}: not a sealing keyring: {e}", path.display()))
        })?;
        Ok(Sealing::new(ring, path))
    }

    fn ring(&self) -> std::sync::RwLockReadGuard<'_, Keyring> {
        self.ring.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The box for a message sealed for our key `rk` from ephemeral `epk`.
    pub fn open_box(&self, rk: &str, epk: &str) -> Result<SharedBox, EnvelopeError> {
        Ok(self.ring().open_box(rk, epk)?)
    }

    /// The key nodes should seal for.
    pub fn current(&self) -> Recipient {
        self.ring().current()
    }

    /// Read the keyring file again (a standby: only the active controller
    /// rotates it). Returns the ids of keys gone since the last read.
    pub fn reload(&self) -> std::io::Result<Vec<String>> {
        let fresh = Sealing::read(self.path.clone())?
            .ring
            .into_inner()
            .unwrap_or_else(|p| p.into_inner());
        let mut ring = self.ring.write().unwrap_or_else(|p| p.into_inner());
        let kept = fresh.ids();
        let gone = ring
            .ids()
            .into_iter()
            .filter(|id| !kept.contains(id))
            .collect();
        *ring = fresh;
        Ok(gone)
    }

    /// Rotate when due and drop keys whose overlap ended, rewriting the
    /// file when anything changed. Returns the ids erased.
    pub fn tick(&self, now: i64, every_ms: i64, overlap_ms: i64) -> std::io::Result<Vec<String>> {
        let mut ring = self.ring.write().unwrap_or_else(|p| p.into_inner());
        let mut changed = false;
        if ring.rotation_due(now, every_ms) {
            let mut secret = [0u8; 32];
            getrandom::fill(&mut secret).map_err(std::io::Error::other)?;
            ring.rotate(secret, now, now + overlap_ms);
            tracing::info!(key = ring.current().id(), "sealing key rotated");
            changed = true;
        }
        let gone = ring.expire(now);
        if !gone.is_empty() {
            tracing::info!(keys = ?gone, "sealing keys erased");
            changed = true;
        }
        if changed {
            save_keyring(&self.path, &ring)?;
        }
        Ok(gone)
    }
}
