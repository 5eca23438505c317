//! Forward-secret sealing keys (envelope schema 2).
//!
//! Each party *receives* on X25519 keys it rotates ([`Keyring`]); a sender
//! seals for the recipient's current key from an ephemeral key pair that
//! exists only in memory ([`Outgoing`]), and names both in the envelope
//! (`epk`, `rk`). Once the recipient erases a retired key, nothing on either
//! side can open what was sealed for it: the sender never stored its half,
//! and the recipient's half is gone.
//!
//! Rotation is a small I/O-free state machine. A party makes a new key every
//! `every` ([`Keyring::rotation_due`]) and announces it in a signed envelope;
//! the previous key stays for an overlap window so messages in flight still
//! open, then [`Keyring::expire`] drops it and the caller rewrites the file
//! that held it. The overlap starts at rotation whatever the peers do (a
//! peer that never hears of the new key cannot keep the old one alive): a
//! party that receives a message sealed for a key it no longer holds, but
//! signed by the peer, tells that peer its current key, and the peer seals
//! again what was not acknowledged. A party never holds more than two keys.
//! Nothing here does I/O or draws randomness: callers pass secrets and clock.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use crypto_box::{PublicKey, SalsaBox, SecretKey};
use serde::{Deserialize, Serialize};

/// Why a key could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("sealed for key {0}, which this party no longer holds (rotated away)")]
    Stale(String),
    #[error("invalid public key")]
    Bad,
}

/// The id of a sealing key as envelopes name it: the first 9 bytes of its
/// public key, base64 (12 characters).
pub fn key_id(public: &PublicKey) -> String {
    B64.encode(&public.as_bytes()[..9])
}

fn decode_key(b64: &str) -> Result<[u8; 32], KeyError> {
    B64.decode(b64)
        .ok()
        .and_then(|v| <[u8; 32]>::try_from(v).ok())
        .ok_or(KeyError::Bad)
}

/// A recipient's current sealing key, as a sender knows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Recipient {
    id: String,
    public: PublicKey,
}

impl std::fmt::Debug for Recipient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Recipient({})", self.id)
    }
}

impl Recipient {
    /// From the base64 public key a party announced.
    pub fn parse(b64: &str) -> Result<Recipient, KeyError> {
        Ok(Recipient::from(PublicKey::from(decode_key(b64)?)))
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The public key, base64 (as announced).
    pub fn to_base64(&self) -> String {
        B64.encode(self.public.as_bytes())
    }
}

impl From<PublicKey> for Recipient {
    fn from(public: PublicKey) -> Recipient {
        Recipient {
            id: key_id(&public),
            public,
        }
    }
}

/// A box both sides of one (recipient key, ephemeral key) pair agree on.
#[derive(Clone)]
pub struct SharedBox(pub(crate) Arc<SalsaBox>);

/// The sender's side for one recipient key: an ephemeral key pair whose
/// secret is dropped as soon as the box is agreed (only the box, in memory,
/// remains). Senders make a new one when the recipient's key changes and at
/// least every [`Outgoing::MAX_AGE_MS`].
#[derive(Clone)]
pub struct Outgoing {
    pub(crate) rk: String,
    pub(crate) epk: String,
    pub(crate) shared: SharedBox,
    made_ms: i64,
}

impl std::fmt::Debug for Outgoing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Outgoing(to {})", self.rk)
    }
}

impl Outgoing {
    /// How long one ephemeral key serves (an hour).
    pub const MAX_AGE_MS: i64 = 3_600_000;

    /// A fresh ephemeral key pair from 32 random bytes, for `to`.
    pub fn new(to: &Recipient, ephemeral: [u8; 32], now_ms: i64) -> Outgoing {
        let secret = SecretKey::from(ephemeral);
        let epk = B64.encode(secret.public_key().as_bytes());
        let shared = SharedBox(Arc::new(SalsaBox::new(&to.public, &secret)));
        // `secret` is zeroed on drop here.
        Outgoing {
            rk: to.id.clone(),
            epk,
            shared,
            made_ms: now_ms,
        }
    }

    /// The recipient key this seals for.
    pub fn recipient_id(&self) -> &str {
        &self.rk
    }

    /// Whether a sender should replace this one: the recipient's key
    /// changed, or it served its time.
    pub fn stale(&self, to: &Recipient, now_ms: i64) -> bool {
        self.rk != to.id || now_ms - self.made_ms >= Self::MAX_AGE_MS
    }
}

mod secret_b64 {
    use super::*;

    pub fn serialize<S: serde::Serializer>(k: &SecretKey, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(k.to_bytes()))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SecretKey, D::Error> {
        let text = String::deserialize(d)?;
        decode_key(&text)
            .map(SecretKey::from)
            .map_err(|_| serde::de::Error::custom("a sealing secret is not 32 base64 bytes"))
    }
}

/// One receiving key as stored.
#[derive(Clone, Serialize, Deserialize)]
struct StoredKey {
    #[serde(with = "secret_b64")]
    secret: SecretKey,
    created_ms: i64,
    /// When it goes; `None` for the current key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retire_at_ms: Option<i64>,
}

/// One receiving key, with its public half worked out once.
#[derive(Clone)]
struct RingKey {
    stored: StoredKey,
    public: Recipient,
}

impl From<StoredKey> for RingKey {
    fn from(stored: StoredKey) -> RingKey {
        let public = Recipient::from(stored.secret.public_key());
        RingKey { stored, public }
    }
}

#[derive(Serialize, Deserialize)]
struct StoredRing {
    keys: Vec<StoredKey>,
}

impl TryFrom<StoredRing> for Keyring {
    type Error = String;

    fn try_from(r: StoredRing) -> Result<Keyring, String> {
        if r.keys.is_empty() {
            return Err("a keyring holds at least one key".into());
        }
        Ok(Keyring {
            keys: r.keys.into_iter().map(RingKey::from).collect(),
        })
    }
}

impl From<Keyring> for StoredRing {
    fn from(r: Keyring) -> StoredRing {
        StoredRing {
            keys: r.keys.into_iter().map(|k| k.stored).collect(),
        }
    }
}

/// A party's receiving keys, newest (current) last; kept in a file only its
/// owner reads, rewritten — old contents overwritten — whenever one goes.
#[derive(Clone, Serialize, Deserialize)]
#[serde(try_from = "StoredRing", into = "StoredRing")]
pub struct Keyring {
    keys: Vec<RingKey>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|k| k.public.id()))
            .finish()
    }
}

impl Keyring {
    /// A ring holding one key made from 32 random bytes.
    pub fn new(secret: [u8; 32], now_ms: i64) -> Keyring {
        Keyring {
            keys: vec![RingKey::from(StoredKey {
                secret: SecretKey::from(secret),
                created_ms: now_ms,
                retire_at_ms: None,
            })],
        }
    }

    fn newest(&self) -> &RingKey {
        // Invariant: never empty (made with one key; expiry keeps the newest).
        self.keys.last().expect("a keyring holds a key")
    }

    /// The key peers should seal for.
    pub fn current(&self) -> Recipient {
        self.newest().public.clone()
    }

    /// Ids of the keys held, oldest first.
    pub fn ids(&self) -> Vec<String> {
        self.keys.iter().map(|k| k.public.id.clone()).collect()
    }

    /// The box for a message sealed for key `rk` from ephemeral `epk`.
    pub fn open_box(&self, rk: &str, epk: &str) -> Result<SharedBox, KeyError> {
        let key = self
            .keys
            .iter()
            .find(|k| k.public.id == rk)
            .ok_or_else(|| KeyError::Stale(rk.chars().take(16).collect()))?;
        let epk = PublicKey::from(decode_key(epk)?);
        Ok(SharedBox(Arc::new(SalsaBox::new(&epk, &key.stored.secret))))
    }

    /// Time for a new key: rotation is on (`every_ms` > 0), the current key
    /// is that old, and no earlier key is still waiting to go.
    pub fn rotation_due(&self, now_ms: i64, every_ms: i64) -> bool {
        every_ms > 0 && self.keys.len() == 1 && now_ms - self.newest().stored.created_ms >= every_ms
    }

    /// Make `secret` the current key; the previous one goes at
    /// `retire_previous_at` (the end of the overlap).
    pub fn rotate(&mut self, secret: [u8; 32], now_ms: i64, retire_previous_at: i64) {
        for k in &mut self.keys {
            if k.stored.retire_at_ms.is_none() {
                k.stored.retire_at_ms = Some(retire_previous_at);
            }
        }
        self.keys.push(RingKey::from(StoredKey {
            secret: SecretKey::from(secret),
            created_ms: now_ms,
            retire_at_ms: None,
        }));
    }

    /// Drop keys whose time has come (never the current one); their ids.
    /// The caller rewrites the file and forgets boxes made with them.
    pub fn expire(&mut self, now_ms: i64) -> Vec<String> {
        let n = self.keys.len() - 1;
        let mut gone = Vec::new();
        let mut i = 0;
        self.keys.retain(|k| {
            let keep = i == n || k.stored.retire_at_ms.is_none_or(|t| t > now_ms);
            if !keep {
                gone.push(k.public.id.clone());
            }
            i += 1;
            keep
        });
        gone
    }

    /// When the next key is due to go, if one is dated.
    pub fn next_expiry(&self) -> Option<i64> {
        self.keys.iter().filter_map(|k| k.stored.retire_at_ms).min()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn the_old_key_opens_during_the_overlap_then_is_gone() {
        let mut ring = Keyring::new([1; 32], 0);
        let first = ring.current();
        assert!(!ring.rotation_due(999, 1000));
        assert!(ring.rotation_due(1000, 1000));
        assert!(!ring.rotation_due(1000, 0), "0 turns rotation off");
        ring.rotate([2; 32], 1000, 1100);
        let second = ring.current();
        assert_ne!(first, second);
        assert_eq!(ring.next_expiry(), Some(1100));
        assert!(!ring.rotation_due(10_000, 1000), "one rotation at a time");
        assert!(ring.expire(1099).is_empty());
        assert!(ring.open_box(first.id(), &second.to_base64()).is_ok());
        assert_eq!(ring.expire(1100), vec![first.id().to_owned()]);
        assert_eq!(
            ring.open_box(first.id(), &second.to_base64()).err(),
            Some(KeyError::Stale(first.id().into()))
        );
        assert_eq!(ring.ids(), vec![second.id().to_owned()]);
        assert_eq!(ring.next_expiry(), None);
        assert!(ring.rotation_due(2000, 1000));
    }

    #[test]
    fn the_ring_survives_its_file() {
        let mut ring = Keyring::new([1; 32], 0);
        ring.rotate([2; 32], 10, 20);
        let json = serde_json::to_string(&ring).unwrap();
        let back: Keyring = serde_json::from_str(&json).unwrap();
        assert_eq!(back.ids(), ring.ids());
        assert_eq!(back.next_expiry(), Some(20));
        assert!(
            serde_json::from_str::<Keyring>(r#"{"keys":[{"secret":"AAAA","created_ms":0}]}"#)
                .is_err()
        );
        assert!(serde_json::from_str::<Keyring>(r#"{"keys":[]}"#).is_err());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Tick(i64),
        Rotate { overlap: i64 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1i64..5_000).prop_map(Op::Tick),
            (1i64..3_000).prop_map(|overlap| Op::Rotate { overlap }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]
        /// Against a model of when each key may go: the ring is never empty,
        /// holds at most two keys, a key goes exactly when its overlap has
        /// passed, the current key never goes, and it always opens.
        #[test]
        fn rotation_keeps_what_is_needed_and_no_more(ops in proptest::collection::vec(op(), 1..60)) {
            const EVERY: i64 = 1_000;
            let mut now = 0i64;
            let mut made = 1u8;
            let mut created = now;
            let mut ring = Keyring::new([made; 32], now);
            // Model: id -> when it may go (None: current).
            let mut model: Vec<(String, Option<i64>)> = vec![(ring.current().id().to_owned(), None)];
            for op in ops {
                match op {
                    Op::Tick(dt) => {
                        now += dt;
                        let gone = ring.expire(now);
                        let mut expected = Vec::new();
                        model.retain(|(id, at)| {
                            let go = at.is_some_and(|t| t <= now);
                            if go { expected.push(id.clone()); }
                            !go
                        });
                        prop_assert_eq!(gone, expected);
                    }
                    Op::Rotate { overlap } => {
                        let due = ring.rotation_due(now, EVERY);
                        prop_assert_eq!(due, model.len() == 1 && now - created >= EVERY);
                        if due {
                            made += 1;
                            created = now;
                            ring.rotate([made; 32], now, now + overlap);
                            for m in &mut model {
                                if m.1.is_none() { m.1 = Some(now + overlap); }
                            }
                            model.push((ring.current().id().to_owned(), None));
                        }
                    }
                }
                prop_assert_eq!(ring.ids(), model.iter().map(|m| m.0.clone()).collect::<Vec<_>>());
                prop_assert!(ring.ids().len() <= 2);
                prop_assert_eq!(model.last().map(|m| m.1), Some(None));
            }
            // The current key opens (one agreement per case: debug-build
            // X25519 is slow).
            let cur = ring.current();
            prop_assert!(ring.open_box(cur.id(), &cur.to_base64()).is_ok());
        }
    }
}
