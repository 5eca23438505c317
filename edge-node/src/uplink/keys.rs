//! The node's sealing keys at run time (forward secrecy, see
//! [`edgedesk_common::sealing`]): opening what the controller sealed for
//! one of them, rotating them, learning the controller's new key, and
//! keeping the identity file in step.
//!
//! The MQTT loop only marks the file dirty; [`run`] writes it, off the loop.
//! A new key is written before it is announced (a crash cannot lose a key
//! the controller seals for), and a key that goes is erased by rewriting the
//! file (old contents overwritten).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edgedesk_common::envelope::{Envelope, EnvelopeError, Peer};
use edgedesk_common::sealing::{Recipient, SharedBox};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::IdentityFile;
use crate::session::now_ms;

/// Boxes agreed with the controller's ephemeral keys (it makes a new one
/// hourly, and when our key changes: two cover the switch).
const BOXES: usize = 2;

/// The identity file and what is derived from it.
pub struct NodeKeys {
    file: Mutex<IdentityFile>,
    path: PathBuf,
    boxes: Mutex<Vec<(String, String, SharedBox)>>,
    every_ms: i64,
    overlap_ms: i64,
    dirty: AtomicBool,
    wake: Notify,
    /// Notified once a new key of ours is on disk, or when the controller
    /// sealed for one we no longer hold: announce ours.
    pub rotated: Notify,
}

impl NodeKeys {
    pub fn new(file: IdentityFile, path: PathBuf, every_secs: u64, overlap_secs: u64) -> NodeKeys {
        NodeKeys {
            file: Mutex::new(file),
            path,
            boxes: Mutex::default(),
            every_ms: every_secs as i64 * 1000,
            overlap_ms: overlap_secs as i64 * 1000,
            dirty: AtomicBool::new(false),
            wake: Notify::new(),
            rotated: Notify::new(),
        }
    }

    fn file(&self) -> std::sync::MutexGuard<'_, IdentityFile> {
        self.file.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn boxes(&self) -> std::sync::MutexGuard<'_, Vec<(String, String, SharedBox)>> {
        self.boxes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn mark_dirty(&self) {
        self.dirty.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// Our current sealing key, base64 (announced in hellos and heartbeats).
    pub fn current(&self) -> String {
        self.file()
            .sealing
            .as_ref()
            .map(|r| r.current().to_base64())
            .unwrap_or_default()
    }

    /// Verify an envelope from the controller, then open it with our key it
    /// names. Sealed for a key we no longer hold: the controller missed our
    /// announcement, so it is made again (it resends what we did not
    /// acknowledge).
    pub fn open(&self, env: &Envelope, controller: &Peer) -> Result<Vec<u8>, EnvelopeError> {
        env.verify(controller)?;
        let cached = self
            .boxes()
            .iter()
            .find(|(rk, epk, _)| *rk == env.rk && *epk == env.epk)
            .map(|b| b.2.clone());
        let shared = match cached {
            Some(b) => b,
            None => {
                let b = {
                    let file = self.file();
                    let ring = file.sealing.as_ref().ok_or(EnvelopeError::BadKey)?;
                    ring.open_box(&env.rk, &env.epk).inspect_err(|_| {
                        self.rotated.notify_one();
                    })?
                };
                let mut boxes = self.boxes();
                if boxes.len() >= BOXES {
                    boxes.remove(0);
                }
                boxes.push((env.rk.clone(), env.epk.clone(), b.clone()));
                b
            }
        };
        env.decrypt(&shared)
    }

    /// The controller announced its current key. Returns it when it is new
    /// to us (the file is updated; the caller seals for it from now on).
    pub fn controller_key(&self, key: &str) -> Option<Recipient> {
        let to = Recipient::parse(key).ok()?;
        {
            let mut file = self.file();
            let pinned = file.controller.as_mut()?;
            if pinned.seal == key {
                return None;
            }
            pinned.seal = key.to_owned();
        }
        tracing::info!(key = to.id(), "the controller's new sealing key");
        self.mark_dirty();
        Some(to)
    }

    /// Rotate when due and drop keys whose overlap ended. True when a new
    /// key was made.
    fn tick(&self, now: i64) -> bool {
        let mut file = self.file();
        let Some(ring) = file.sealing.as_mut() else {
            return false;
        };
        let mut rotated = false;
        if ring.rotation_due(now, self.every_ms) {
            let mut secret = [0u8; 32];
            getrandom::fill(&mut secret).expect("OS random source");
            ring.rotate(secret, now, now + self.overlap_ms);
            tracing::info!(key = ring.current().id(), "sealing key rotated");
            rotated = true;
        }
        let gone = ring.expire(now);
        drop(file);
        if !gone.is_empty() {
            tracing::info!(keys = ?gone, "sealing keys erased");
            self.boxes().retain(|(rk, _, _)| !gone.contains(rk));
        }
        if rotated || !gone.is_empty() {
            self.dirty.store(true, Ordering::SeqCst);
        }
        rotated
    }

    /// Write the file if something changed.
    async fn save(&self) -> bool {
        if !self.dirty.swap(false, Ordering::SeqCst) {
            return true;
        }
        let snapshot = self.file().clone();
        let path = self.path.clone();
        let saved = tokio::task::spawn_blocking(move || snapshot.save(&path))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        if let Err(e) = saved {
            tracing::error!(error = %e, "saving the identity file failed; retrying");
            self.dirty.store(true, Ordering::SeqCst);
            return false;
        }
        true
    }
}

/// Rotate, expire and save until shutdown (then save once more).
pub async fn run(keys: Arc<NodeKeys>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut announce = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
            _ = keys.wake.notified() => {}
        }
        announce |= keys.tick(now_ms());
        if keys.save().await && announce {
            // On disk: now the controller may seal for it.
            announce = false;
            keys.rotated.notify_one();
        }
    }
    keys.save().await;
}

#[cfg(test)]
mod tests {
    use edgedesk_common::envelope::{Header, Identity};
    use edgedesk_common::sealing::{Keyring, Outgoing};

    use super::*;

    fn file(dir: &std::path::Path) -> (IdentityFile, PathBuf) {
        let path = dir.join("identity.json");
        let mut f = IdentityFile::load_or_create(&path, "n1").unwrap();
        f.controller = Some(Identity::from_secret(&[9; 64]).public());
        (f, path)
    }

    fn from_controller(ctl: &Identity, to: &Recipient, seq: u64, eph: u8) -> Envelope {
        Envelope::seal(
            ctl,
            &Outgoing::new(to, [eph; 32], 0),
            Header {
                id: "m",
                from: "controller",
                to: "n1",
                seq,
                ts: 0,
            },
            [1; 24],
            b"hi",
        )
    }

    #[tokio::test]
    async fn the_old_key_is_erased_from_the_file_once_the_controller_moved_on() {
        let dir = tempfile::tempdir().unwrap();
        let (f, path) = file(dir.path());
        let ctl = Identity::from_secret(&[9; 64]);
        let ctl_peer = ctl.public().parse().unwrap();
        let keys = NodeKeys::new(f, path.clone(), 1, 1);
        let first = Recipient::parse(&keys.current()).unwrap();
        let old_secret = {
            let text = std::fs::read_to_string(&path).unwrap();
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            v["sealing"]["keys"][0]["secret"]
                .as_str()
                .unwrap()
                .to_owned()
        };
        let before = from_controller(&ctl, &first, 1, 3);
        assert_eq!(keys.open(&before, &ctl_peer).unwrap(), b"hi");
        // Rotation is due after a second of key age.
        assert!(keys.tick(now_ms() + 1_000));
        assert!(keys.save().await);
        let second = Recipient::parse(&keys.current()).unwrap();
        assert_ne!(first, second);
        // During the overlap both open.
        assert_eq!(keys.open(&before, &ctl_peer).unwrap(), b"hi");
        keys.open(&from_controller(&ctl, &second, 2, 4), &ctl_peer)
            .unwrap();
        // After it the old key goes, and the file is rewritten.
        assert!(!keys.tick(now_ms() + 2_001), "one rotation at a time");
        assert!(keys.save().await);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&old_secret), "the old secret is gone");
        let ring: Keyring = serde_json::from_value(
            serde_json::from_str::<serde_json::Value>(&text).unwrap()["sealing"].clone(),
        )
        .unwrap();
        assert_eq!(ring.ids(), vec![second.id().to_owned()]);
        let announced = keys.rotated.notified();
        assert!(matches!(
            keys.open(&before, &ctl_peer),
            Err(EnvelopeError::StaleKey(_))
        ));
        tokio::time::timeout(std::time::Duration::from_secs(1), announced)
            .await
            .expect("a stale key makes the node announce its current one");
        // A forged envelope does not even reach the keyring.
        let mallory = Identity::from_secret(&[7; 64]);
        assert_eq!(
            keys.open(&from_controller(&mallory, &second, 3, 5), &ctl_peer),
            Err(EnvelopeError::BadSignature)
        );
    }

    #[test]
    fn an_identity_file_from_before_rotation_moves_its_sealing_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.json");
        let secret: [u8; 64] = std::array::from_fn(|i| i as u8);
        std::fs::write(
            &path,
            serde_json::json!({"node_id": "n1", "secret": hex::encode(secret)}).to_string(),
        )
        .unwrap();
        let f = IdentityFile::load_or_create(&path, "n1").unwrap();
        let old = Identity::from_secret(&secret);
        assert_eq!(
            f.keyring().unwrap().current().to_base64(),
            old.public().seal,
            "the enrolled key keeps working"
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            !text.contains(&hex::encode(&secret[32..])),
            "moved out of `secret`"
        );
        assert_eq!(f.identity().unwrap().public().sign, old.public().sign);
    }

    #[test]
    fn a_new_controller_key_is_taken_once() {
        let dir = tempfile::tempdir().unwrap();
        let (f, path) = file(dir.path());
        let keys = NodeKeys::new(f, path, 86_400, 3_600);
        let new = Keyring::new([8; 32], 0).current().to_base64();
        assert!(keys.controller_key(&new).is_some());
        assert!(keys.controller_key(&new).is_none(), "already known");
        assert!(keys.controller_key("not a key").is_none());
    }
}
