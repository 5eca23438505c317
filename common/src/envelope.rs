//! Sealed, signed envelopes: how every edge↔cloud message crosses an
//! untrusted MQTT broker (sync protocol v1).
//!
//! The body is encrypted with `crypto_box` (X25519 + XSalsa20-Poly1305) from
//! a sender's ephemeral key (`epk`) to the recipient's current, rotating
//! sealing key (`rk`), see [`crate::sealing`]: forward secret once the
//! recipient erases a retired key. The whole header plus ciphertext is
//! signed by the sender's long-term Ed25519 key. A subscriber on `#` sees
//! routing metadata and ciphertext only; a forged, tampered or misdirected
//! envelope fails to open. Replays are caught by [`ReplayWindow`] on the
//! receiving side. Nothing here does I/O or draws randomness: callers pass
//! the nonce, ephemeral secrets and clock.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use crypto_box::aead::Aead;
use crypto_box::{PublicKey, SecretKey};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::sealing::{KeyError, Keyring, Outgoing, Recipient, SharedBox};

/// Major version of the envelope schema; a different major is refused.
/// 2: forward-secret sealing (`epk`, `rk`); 1 sealed static to static.
pub const SCHEMA_MAJOR: u32 = 2;
/// Minor version written by this build; newer minors are accepted.
pub const SCHEMA_MINOR: u32 = 0;
/// The `from`/`to` name of the controller.
pub const CONTROLLER: &str = "controller";

/// MQTT topic layout.
pub mod topic {
    /// Prefix of every EdgeDesk topic.
    pub const ROOT: &str = "edgedesk/v1";
    /// Subscription of the controller for everything nodes send.
    pub const ALL_UP: &str = "edgedesk/v1/nodes/+/up";

    /// Node → controller.
    pub fn up(node: &str) -> String {
        format!("{ROOT}/nodes/{node}/up")
    }

    /// Controller → node.
    pub fn down(node: &str) -> String {
        format!("{ROOT}/nodes/{node}/down")
    }

    /// The node named in an `…/nodes/{node}/up` topic.
    pub fn node_of_up(topic: &str) -> Option<&str> {
        let rest = topic.strip_prefix(ROOT)?.strip_prefix("/nodes/")?;
        let node = rest.strip_suffix("/up")?;
        super::valid_node_id(node).then_some(node)
    }
}

/// Node ids: 1–64 of `a-z 0-9 - _ .`, so they are safe in topics, paths and logs.
pub fn valid_node_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
}

/// A party's long-term secret keys: Ed25519 for signing, and the X25519 key
/// its [`crate::sealing::Keyring`] starts from (its half of the stored secret
/// is zeroed once moved there: see [`Identity::without_sealing`]).
#[derive(Clone)]
pub struct Identity {
    signing: SigningKey,
    sealing: SecretKey,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("public", &self.public())
            .finish_non_exhaustive()
    }
}

/// A party's public keys, as exchanged at enrolment (base64).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKeys {
    pub sign: String,
    pub seal: String,
}

/// Parsed public keys, ready to verify and seal.
#[derive(Debug, Clone)]
pub struct Peer {
    verify: VerifyingKey,
    seal: Recipient,
}

impl Identity {
    /// Build from 64 secret bytes (32 signing + 32 sealing), e.g. fresh randomness.
    pub fn from_secret(secret: &[u8; 64]) -> Identity {
        let mut sign = [0u8; 32];
        let mut seal = [0u8; 32];
        sign.copy_from_slice(&secret[..32]);
        seal.copy_from_slice(&secret[32..]);
        Identity {
            signing: SigningKey::from_bytes(&sign),
            sealing: SecretKey::from(seal),
        }
    }

    /// The 64 secret bytes, for storing the identity.
    pub fn secret(&self) -> [u8; 64] {
        let mut out = [0u8; 64];
        out[..32].copy_from_slice(&self.signing.to_bytes());
        out[32..].copy_from_slice(&self.sealing.to_bytes());
        out
    }

    pub fn public(&self) -> PublicKeys {
        PublicKeys {
            sign: B64.encode(self.signing.verifying_key().to_bytes()),
            seal: B64.encode(self.sealing.public_key().as_bytes()),
        }
    }

    /// The 32 secret bytes of the sealing key this identity was made with
    /// (the first key of a keyring).
    pub fn sealing_seed(&self) -> [u8; 32] {
        self.sealing.to_bytes()
    }

    /// The stored secret with the sealing half zeroed, for once the key
    /// lives in a keyring that rotates it away.
    pub fn without_sealing(&self) -> [u8; 64] {
        let mut out = self.secret();
        out[32..].fill(0);
        out
    }

    /// The public keys to announce: the signing key and `seal`, a keyring's
    /// current key.
    pub fn announce(&self, seal: &Recipient) -> PublicKeys {
        PublicKeys {
            sign: B64.encode(self.signing.verifying_key().to_bytes()),
            seal: seal.to_base64(),
        }
    }

    /// Sign arbitrary bytes (used for the node's proof of key possession).
    pub fn sign(&self, msg: &[u8]) -> String {
        B64.encode(self.signing.sign(msg).to_bytes())
    }
}

impl PublicKeys {
    pub fn parse(&self) -> Result<Peer, EnvelopeError> {
        let sign: [u8; 32] = decode_fixed(&self.sign)?;
        let seal: [u8; 32] = decode_fixed(&self.seal)?;
        Ok(Peer {
            verify: VerifyingKey::from_bytes(&sign).map_err(|_| EnvelopeError::BadKey)?,
            seal: Recipient::from(PublicKey::from(seal)),
        })
    }
}

impl Peer {
    /// The sealing key the peer announced last.
    pub fn recipient(&self) -> &Recipient {
        &self.seal
    }

    /// The same peer, now receiving on `seal`.
    pub fn with_recipient(&self, seal: Recipient) -> Peer {
        Peer {
            verify: self.verify,
            seal,
        }
    }

    /// Check a detached signature made with [`Identity::sign`].
    pub fn verify(&self, msg: &[u8], sig_b64: &str) -> bool {
        let Ok(bytes) = decode_fixed::<64>(sig_b64) else {
            return false;
        };
        self.verify
            .verify_strict(msg, &Signature::from_bytes(&bytes))
            .is_ok()
    }
}

fn decode_fixed<const N: usize>(b64: &str) -> Result<[u8; N], EnvelopeError> {
    let v = B64
        .decode(b64)
        .map_err(|_| EnvelopeError::Malformed("bad base64".into()))?;
    v.try_into()
        .map_err(|_| EnvelopeError::Malformed(format!("expected {N} bytes")))
}

/// What travels on the broker. Routing fields are clear; `body` is sealed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Schema version "major.minor".
    pub v: String,
    /// Unique message id (UUID).
    pub id: String,
    pub from: String,
    pub to: String,
    /// Per-sender sequence number, strictly increasing.
    pub seq: u64,
    /// Sender's clock, Unix milliseconds.
    pub ts: i64,
    /// 24-byte nonce, base64.
    pub nonce: String,
    /// The sender's ephemeral X25519 public key, base64.
    pub epk: String,
    /// Id of the recipient's sealing key the body is sealed for.
    pub rk: String,
    /// Sealed body, base64.
    pub body: String,
    /// Ed25519 signature over every other field, base64.
    pub sig: String,
}

/// Why an envelope was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("malformed envelope: {0}")]
    Malformed(String),
    #[error("unsupported schema version {0} (this build speaks {SCHEMA_MAJOR}.x)")]
    UnsupportedVersion(String),
    #[error("invalid public key")]
    BadKey,
    #[error("signature does not verify")]
    BadSignature,
    #[error("body cannot be opened (tampered, or sealed for someone else)")]
    Undecryptable,
    #[error("replayed or too old sequence number {0}")]
    Replay(u64),
    #[error("sealed for key {0}, which this party no longer holds (rotated away)")]
    StaleKey(String),
}

impl EnvelopeError {
    /// Stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            EnvelopeError::Malformed(_) => "malformed",
            EnvelopeError::UnsupportedVersion(_) => "version",
            EnvelopeError::BadKey => "bad_key",
            EnvelopeError::BadSignature => "signature",
            EnvelopeError::Undecryptable => "undecryptable",
            EnvelopeError::Replay(_) => "replay",
            EnvelopeError::StaleKey(_) => "stale_key",
        }
    }
}

impl From<KeyError> for EnvelopeError {
    fn from(e: KeyError) -> EnvelopeError {
        match e {
            KeyError::Stale(id) => EnvelopeError::StaleKey(id),
            KeyError::Bad => EnvelopeError::BadKey,
        }
    }
}

/// Header fields an envelope is built from.
#[derive(Debug, Clone)]
pub struct Header<'a> {
    pub id: &'a str,
    pub from: &'a str,
    pub to: &'a str,
    pub seq: u64,
    pub ts: i64,
}

/// What the signature covers besides the header.
struct Sealed<'a> {
    nonce: &'a str,
    epk: &'a str,
    rk: &'a str,
    body: &'a str,
}

fn signed_bytes(v: &str, h: &Header<'_>, s: &Sealed<'_>) -> Vec<u8> {
    // Fields joined by a byte that base64, ids and numbers never contain.
    let Header {
        id,
        from,
        to,
        seq,
        ts,
    } = h;
    let Sealed {
        nonce,
        epk,
        rk,
        body,
    } = s;
    format!(
        "edgedesk-envelope\x1f{v}\x1f{id}\x1f{from}\x1f{to}\x1f{seq}\x1f{ts}\x1f{nonce}\x1f{epk}\x1f{rk}\x1f{body}"
    )
    .into_bytes()
}

impl Envelope {
    /// Seal `plaintext` with `to` (an ephemeral key for the recipient's
    /// current sealing key) and sign it as `sender`.
    pub fn seal(
        sender: &Identity,
        to: &Outgoing,
        header: Header<'_>,
        nonce: [u8; NONCE_LEN],
        plaintext: &[u8],
    ) -> Envelope {
        let n = crypto_box::Nonce::from(nonce);
        // Encryption with a valid key and nonce cannot fail for in-memory buffers.
        let ct = to.shared.0.encrypt(&n, plaintext).unwrap_or_default();
        let v = format!("{SCHEMA_MAJOR}.{SCHEMA_MINOR}");
        let sealed = Sealed {
            nonce: &B64.encode(nonce),
            epk: &to.epk,
            rk: &to.rk,
            body: &B64.encode(ct),
        };
        let msg = signed_bytes(&v, &header, &sealed);
        let sig = B64.encode(sender.signing.sign(&msg).to_bytes());
        Envelope {
            v,
            id: header.id.into(),
            from: header.from.into(),
            to: header.to.into(),
            seq: header.seq,
            ts: header.ts,
            nonce: sealed.nonce.into(),
            epk: sealed.epk.into(),
            rk: sealed.rk.into(),
            body: sealed.body.into(),
            sig,
        }
    }

    /// Parse JSON, tolerating unknown fields and newer minor versions.
    pub fn from_json(bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
        let env: Envelope =
            serde_json::from_slice(bytes).map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
        env.check_version()?;
        Ok(env)
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    fn check_version(&self) -> Result<(), EnvelopeError> {
        let major = self.v.split('.').next().and_then(|m| m.parse::<u32>().ok());
        match major {
            Some(SCHEMA_MAJOR) => Ok(()),
            Some(_) => Err(EnvelopeError::UnsupportedVersion(self.v.clone())),
            None => Err(EnvelopeError::Malformed(format!(
                "version {:?}",
                self.v.chars().take(16).collect::<String>()
            ))),
        }
    }

    /// Check the version and the sender's signature over every field.
    pub fn verify(&self, sender: &Peer) -> Result<(), EnvelopeError> {
        self.check_version()?;
        let header = Header {
            id: &self.id,
            from: &self.from,
            to: &self.to,
            seq: self.seq,
            ts: self.ts,
        };
        let sealed = Sealed {
            nonce: &self.nonce,
            epk: &self.epk,
            rk: &self.rk,
            body: &self.body,
        };
        let msg = signed_bytes(&self.v, &header, &sealed);
        let sig: [u8; 64] = decode_fixed(&self.sig).map_err(|_| EnvelopeError::BadSignature)?;
        sender
            .verify
            .verify_strict(&msg, &Signature::from_bytes(&sig))
            .map_err(|_| EnvelopeError::BadSignature)
    }

    /// Decrypt the body of a verified envelope with the box agreed for its
    /// (`rk`, `epk`) pair (see [`Keyring::open_box`]).
    pub fn decrypt(&self, with: &SharedBox) -> Result<Vec<u8>, EnvelopeError> {
        let nonce: [u8; 24] = decode_fixed(&self.nonce)?;
        let ct = B64
            .decode(&self.body)
            .map_err(|_| EnvelopeError::Malformed("body base64".into()))?;
        with.0
            .decrypt(&crypto_box::Nonce::from(nonce), ct.as_slice())
            .map_err(|_| EnvelopeError::Undecryptable)
    }

    /// Verify, then open with the recipient's keyring (no box cache).
    pub fn open(&self, sender: &Peer, ring: &Keyring) -> Result<Vec<u8>, EnvelopeError> {
        self.verify(sender)?;
        self.decrypt(&ring.open_box(&self.rk, &self.epk)?)
    }
}

/// Sequence numbers one start of a sender reserves (2^40: at a thousand
/// messages a second, more than thirty years' worth).
pub const SEQ_BLOCK: u64 = 1 << 40;

/// A sender's sequence numbers: strictly increasing, across restarts too,
/// and independent of the clock (a clock that jumps forward and back must
/// not make a receiver refuse every later message).
///
/// At start the sender reads the top it reserved last time from durable
/// storage and calls [`SeqCounter::resume`], which hands out numbers after
/// that top and returns the new top, to be stored *before* the first number
/// is used. A first start with nothing stored begins at the clock in µs,
/// above every number of the clock-based scheme older builds used.
#[derive(Debug, Default)]
pub struct SeqCounter {
    last: std::sync::atomic::AtomicU64,
}

impl SeqCounter {
    /// Continue after `reserved` (0: nothing stored yet, start from
    /// `now_micros`). Returns the counter and the top to store now.
    pub fn resume(reserved: u64, now_micros: u64) -> (SeqCounter, u64) {
        let start = if reserved == 0 { now_micros } else { reserved };
        let counter = SeqCounter {
            last: std::sync::atomic::AtomicU64::new(start),
        };
        (counter, start.saturating_add(SEQ_BLOCK))
    }

    /// The next number.
    pub fn next(&self) -> u64 {
        self.last.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1
    }
}

/// Nonce length for [`Envelope::seal`]; generate it from a CSPRNG.
pub const NONCE_LEN: usize = 24;

/// Anti-replay window over a sender's sequence numbers (as in IPsec): accepts
/// each number once, tolerates reordering within `WINDOW` of the highest seen,
/// refuses anything older. Pure state; persist [`ReplayWindow::highest`] to
/// survive restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayWindow {
    highest: u64,
    seen: u128,
}

impl ReplayWindow {
    pub const WINDOW: u64 = 128;

    /// Start after a persisted high-water mark: everything at or below it is refused.
    pub fn starting_at(highest: u64) -> ReplayWindow {
        // What was seen below the mark is unknown after a restart: refuse it all.
        ReplayWindow {
            highest,
            seen: if highest > 0 { u128::MAX } else { 0 },
        }
    }

    /// Start at a mark another receiver of the same sender may have moved
    /// (replicas sharing a sender's messages): the numbers within the window
    /// below it count as unseen here, and the authoritative check is the
    /// shared one (the controller's database).
    pub fn open_at(highest: u64) -> ReplayWindow {
        ReplayWindow { highest, seen: 0 }
    }

    pub fn highest(&self) -> u64 {
        self.highest
    }

    /// Accept `seq` once; refuse repeats and numbers older than the window.
    pub fn accept(&mut self, seq: u64) -> Result<(), EnvelopeError> {
        if seq == 0 {
            return Err(EnvelopeError::Replay(seq));
        }
        if seq > self.highest {
            let shift = seq - self.highest;
            self.seen = if shift >= Self::WINDOW {
                0
            } else {
                self.seen << shift
            };
            self.seen |= 1;
            self.highest = seq;
            return Ok(());
        }
        let age = self.highest - seq;
        if age >= Self::WINDOW {
            return Err(EnvelopeError::Replay(seq));
        }
        let bit = 1u128 << age;
        if self.seen & bit != 0 {
            return Err(EnvelopeError::Replay(seq));
        }
        self.seen |= bit;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ident(seed: u8) -> Identity {
        Identity::from_secret(&[seed; 64])
    }

    fn header(seq: u64) -> Header<'static> {
        Header {
            id: "m1",
            from: "branch-1",
            to: CONTROLLER,
            seq,
            ts: 1000,
        }
    }

    fn ring(seed: u8) -> Keyring {
        Keyring::new([seed; 32], 0)
    }

    fn to(ring: &Keyring, eph: u8) -> Outgoing {
        Outgoing::new(&ring.current(), [eph; 32], 0)
    }

    #[test]
    fn seal_open_round_trip_and_identity_persistence() {
        let (node, ctl) = (ident(1), ring(2));
        let env = Envelope::seal(&node, &to(&ctl, 9), header(1), [7; 24], b"hello");
        let json = env.to_json();
        assert!(
            !String::from_utf8_lossy(&json).contains("hello"),
            "body is not readable"
        );
        let back = Envelope::from_json(&json).unwrap();
        assert_eq!(back.rk, ctl.current().id());
        assert_eq!(
            back.open(&node.public().parse().unwrap(), &ctl).unwrap(),
            b"hello"
        );
        let restored = Identity::from_secret(&node.secret());
        assert_eq!(restored.public(), node.public());
        let announced = node.announce(&ctl.current());
        assert_eq!(announced.sign, node.public().sign);
        assert_eq!(
            announced.parse().unwrap().recipient(),
            &ctl.current(),
            "the keyring's key is announced"
        );
        assert_eq!(&node.without_sealing()[32..], &[0u8; 32]);
        assert_eq!(&node.without_sealing()[..32], &node.secret()[..32]);
    }

    #[test]
    fn forged_tampered_misdirected_and_rotated_away_envelopes_fail() {
        let (node, mallory) = (ident(1), ident(3));
        let mut ctl = ring(2);
        let node_pub = node.public().parse().unwrap();
        // Mallory signs with her own key but claims to be branch-1.
        let forged = Envelope::seal(&mallory, &to(&ctl, 9), header(1), [1; 24], b"x");
        assert_eq!(
            forged.open(&node_pub, &ctl),
            Err(EnvelopeError::BadSignature)
        );
        // Tampering with any signed field.
        let good = Envelope::seal(&node, &to(&ctl, 9), header(1), [1; 24], b"x");
        for edit in [
            |e: &mut Envelope| e.seq += 1,
            |e: &mut Envelope| e.to = "someone".into(),
            |e: &mut Envelope| e.body = B64.encode(b"garbage-garbage-garbage"),
            |e: &mut Envelope| e.ts -= 1,
            |e: &mut Envelope| e.epk = B64.encode([5u8; 32]),
            |e: &mut Envelope| e.rk = "AAAAAAAAAAAA".into(),
        ] {
            let mut t = good.clone();
            edit(&mut t);
            assert_eq!(t.open(&node_pub, &ctl), Err(EnvelopeError::BadSignature));
        }
        // Sealed for the controller: Mallory's keyring cannot open it even
        // with a valid signature and the right key id forced in.
        let mallory_ring = ring(4);
        assert!(matches!(
            good.open(&node_pub, &mallory_ring),
            Err(EnvelopeError::StaleKey(_))
        ));
        let with_rk = good.decrypt(
            &mallory_ring
                .open_box(mallory_ring.current().id(), &good.epk)
                .unwrap(),
        );
        assert_eq!(with_rk, Err(EnvelopeError::Undecryptable));
        // Once the controller's key is rotated away, nothing opens it.
        let old = ctl.current();
        ctl.rotate([6; 32], 1, 2);
        assert_eq!(good.open(&node_pub, &ctl).unwrap(), b"x", "overlap");
        ctl.expire(2);
        assert_eq!(
            good.open(&node_pub, &ctl),
            Err(EnvelopeError::StaleKey(old.id().into()))
        );
        // Schema 1 (static to static, no epk/rk) is refused by name.
        let mut v: serde_json::Value = serde_json::from_slice(&good.to_json()).unwrap();
        v["v"] = serde_json::json!("1.0");
        assert_eq!(
            Envelope::from_json(v.to_string().as_bytes()),
            Err(EnvelopeError::UnsupportedVersion("1.0".into()))
        );
    }

    #[test]
    fn versions_and_unknown_fields() {
        let (node, ctl) = (ident(1), ring(2));
        let env = Envelope::seal(&node, &to(&ctl, 9), header(1), [1; 24], b"x");
        let mut v: serde_json::Value = serde_json::from_slice(&env.to_json()).unwrap();
        v["future_field"] = serde_json::json!(true);
        assert!(
            Envelope::from_json(v.to_string().as_bytes()).is_ok(),
            "unknown fields tolerated"
        );
        v["v"] = serde_json::json!("2.7");
        assert!(
            Envelope::from_json(v.to_string().as_bytes()).is_ok(),
            "newer minor tolerated"
        );
        v["v"] = serde_json::json!("3.0");
        assert_eq!(
            Envelope::from_json(v.to_string().as_bytes()),
            Err(EnvelopeError::UnsupportedVersion("3.0".into()))
        );
    }

    #[test]
    fn topics_and_node_ids() {
        assert_eq!(topic::up("b-1"), "edgedesk/v1/nodes/b-1/up");
        assert_eq!(topic::node_of_up("edgedesk/v1/nodes/b-1/up"), Some("b-1"));
        assert_eq!(topic::node_of_up("edgedesk/v1/nodes/+/up"), None);
        assert_eq!(topic::node_of_up("edgedesk/v1/nodes/b-1/down"), None);
        assert!(valid_node_id("branch-01.paris"));
        for bad in ["", "A", "a/b", "a+b", "#", &"x".repeat(65)] {
            assert!(!valid_node_id(bad), "{bad}");
        }
    }

    #[test]
    fn sequence_numbers_survive_restarts_and_ignore_the_clock() {
        // First start: from the clock, with a block reserved above it.
        let (c, top) = SeqCounter::resume(0, 1_000);
        assert_eq!((c.next(), c.next()), (1_001, 1_002));
        assert_eq!(top, 1_000 + SEQ_BLOCK);
        // Restart: after the stored top, whatever the clock says.
        let (c2, top2) = SeqCounter::resume(top, 5);
        assert!(c2.next() > top && top2 == top + SEQ_BLOCK);
        // A receiver that accepted the first run's numbers accepts the second's.
        let mut w = ReplayWindow::starting_at(1_002);
        assert!(w.accept(c2.next()).is_ok());
    }

    #[test]
    fn replay_window() {
        let mut w = ReplayWindow::default();
        assert!(w.accept(5).is_ok());
        assert!(w.accept(5).is_err(), "exact replay");
        assert!(w.accept(3).is_ok(), "reordered within window");
        assert!(w.accept(3).is_err());
        assert!(w.accept(500).is_ok());
        assert!(w.accept(6).is_err(), "older than the window");
        let mut w = ReplayWindow::starting_at(500);
        assert!(
            w.accept(500).is_err(),
            "persisted high-water mark survives a restart"
        );
        assert!(w.accept(499).is_err());
        assert!(w.accept(501).is_ok());
        // Another replica moved the mark to 500: what it did not take
        // below is new here, once; below the window stays refused.
        let mut w = ReplayWindow::open_at(500);
        assert!(w.accept(499).is_ok());
        assert!(w.accept(499).is_err());
        assert!(w.accept(373).is_ok());
        assert!(w.accept(372).is_err(), "older than the window");
        assert!(w.accept(501).is_ok());
    }
}
