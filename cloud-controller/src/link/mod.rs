//! The controller's side of edge sync: one MQTT client subscribed to every
//! node's `up` topic.
//!
//! - [`transport`]: the MQTT event loop (parse, hand over to a bounded queue)
//!   and the publisher that seals what [`Downlink`] hands it.
//! - [`dispatch`]: opens and checks each envelope, applies a batch in one
//!   store transaction, then acknowledges, updates the fleet and feeds the
//!   live-chat desk ([`Handoff`]) through its channel.
//!
//! [`Keys`] caches nodes' public keys and replay windows for both;
//! [`Presence`] turns the fleet state machine's transitions into records.

pub mod dispatch;
pub mod relay;
pub mod transport;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use edgedesk_common::envelope::{Envelope, EnvelopeError, Peer, ReplayWindow};
use edgedesk_common::sealing::{Outgoing, Recipient, SharedBox};

use crate::identity::Sealing;

use crate::downlink::{Downlink, now_ms};
use crate::fleet::{Fleet, Transition};
use crate::handoff::{Handoff, In};
use crate::metrics::Metrics;
use crate::store::nodes::Transition as Recorded;
use crate::store::{Store, StoreError};

/// Boxes agreed with a node's ephemeral keys, kept per node (a node changes
/// its ephemeral key hourly and when our key changes: two cover the switch).
const BOXES_PER_NODE: usize = 2;
/// A node that seals for an old key is told the current one at once, and
/// again at most this often (the first word may be lost).
const TELL_EVERY_MS: i64 = 2_000;

/// What the controller knows about a node's keys and replay state.
struct NodeSec {
    peer: Peer,
    window: ReplayWindow,
    /// (our key id, the node's ephemeral key) → agreed box, newest last.
    boxes: Vec<(String, String, SharedBox)>,
    /// Our ephemeral key for the node's current sealing key.
    out: Option<Outgoing>,
    /// Which of our keys the node was last told, and when.
    told: Option<(String, i64)>,
}

/// Nodes' public keys, cached since the node (or a send to it) last needed
/// them (every message would else cost a store read), with their replay
/// windows and the boxes agreed with them.
///
/// Unknown and revoked ids cost no store read: the broker credentials are
/// the in-memory list of enrolled, unrevoked nodes, checked first (the
/// negative cache), and again under the map's lock before a looked-up key is
/// cached, so a node revoked during the lookup is not cached (revocation
/// removes the credentials before the cached keys).
#[derive(Clone)]
pub struct Keys {
    store: Store,
    sealing: Arc<Sealing>,
    creds: crate::broker::Credentials,
    nodes: Arc<Mutex<HashMap<String, NodeSec>>>,
    /// Replicas share nodes' messages: a node's stored mark may have been
    /// moved by another replica, so the window opens below it (the
    /// database's window decides, `store::events::take_seq`).
    shared: bool,
    /// Woken when a node not in `creds` speaks.
    unknown: Arc<tokio::sync::Notify>,
}

impl Keys {
    pub fn new(store: Store, sealing: Arc<Sealing>, creds: crate::broker::Credentials) -> Keys {
        Keys {
            store,
            sealing,
            creds,
            nodes: Arc::default(),
            shared: false,
            unknown: Arc::default(),
        }
    }

    /// Resolves when a node not among the enrolled ones sent something
    /// since the last call (a standby then reads the node list again).
    pub async fn unknown_node(&self) {
        self.unknown.notified().await;
    }

    /// For replicas sharing node traffic (see the field).
    pub fn shared(mut self, shared: bool) -> Keys {
        self.shared = shared;
        self
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, NodeSec>> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn sealing(&self) -> &Sealing {
        &self.sealing
    }

    /// `None` for an unknown or revoked node, or one whose stored keys do
    /// not parse (they were checked at enrolment).
    pub async fn peer(&self, node: &str) -> Result<Option<Peer>, StoreError> {
        if let Some(sec) = self.map().get(node) {
            return Ok(Some(sec.peer.clone()));
        }
        if !self.creds.contains(node) {
            // A standby learns of enrolments by reading the node list: at
            // once when an unknown node speaks (see `unknown`).
            self.unknown.notify_one();
            return Ok(None);
        }
        let row = self.store.node(node).await?;
        Ok(row.and_then(|r| self.cache(r)))
    }

    /// Read the keys of every node in `nodes` not cached yet in one store
    /// query (a batch's first messages from many nodes would else cost a
    /// read each, one after the other: seconds for ten thousand nodes).
    pub async fn preload<'a>(
        &self,
        nodes: impl Iterator<Item = &'a str>,
    ) -> Result<(), StoreError> {
        let missing: Vec<String> = {
            let map = self.map();
            let mut seen = std::collections::HashSet::new();
            nodes
                .filter(|n| !map.contains_key(*n) && self.creds.contains(n) && seen.insert(*n))
                .map(str::to_owned)
                .collect()
        };
        if missing.len() < 2 {
            return Ok(()); // one is read by `peer` as before
        }
        for row in self.store.nodes_among(missing).await? {
            self.cache(row);
        }
        Ok(())
    }

    /// Cache a node's keys from its registry row; `None` if it is revoked
    /// (also while we read) or its keys do not parse.
    fn cache(&self, row: crate::store::NodeRow) -> Option<Peer> {
        if row.revoked_at.is_some() {
            return None;
        }
        let peer: Peer = row.keys.parse().ok()?;
        let mut map = self.map();
        if !self.creds.contains(&row.id) {
            return None; // revoked while we read
        }
        let sec = map.entry(row.id.clone()).or_insert_with(|| NodeSec {
            peer,
            window: if self.shared {
                ReplayWindow::open_at(row.seq_high)
            } else {
                ReplayWindow::starting_at(row.seq_high)
            },
            boxes: Vec::new(),
            out: None,
            told: None,
        });
        Some(sec.peer.clone())
    }

    /// Verify an envelope from `node` and open it. `StaleKey` means the
    /// signature held but it was sealed for a key of ours that is gone.
    pub async fn open(&self, node: &str, env: &Envelope) -> Result<Vec<u8>, EnvelopeError> {
        let peer = self
            .peer(node)
            .await
            .map_err(|e| EnvelopeError::Malformed(e.to_string()))?
            .ok_or(EnvelopeError::BadKey)?;
        env.verify(&peer)?;
        let cached = self.map().get(node).and_then(|sec| {
            sec.boxes
                .iter()
                .find(|(rk, epk, _)| *rk == env.rk && *epk == env.epk)
                .map(|b| b.2.clone())
        });
        let shared = match cached {
            Some(b) => b,
            None => {
                let b = self.sealing.open_box(&env.rk, &env.epk)?;
                if let Some(sec) = self.map().get_mut(node) {
                    if sec.boxes.len() >= BOXES_PER_NODE {
                        sec.boxes.remove(0);
                    }
                    sec.boxes.push((env.rk.clone(), env.epk.clone(), b.clone()));
                }
                b
            }
        };
        env.decrypt(&shared)
    }

    /// Whether `node`, which sealed for `rk`, should be told our current key
    /// now (it used an older one, and was not told in the last few seconds).
    pub fn should_tell(&self, node: &str, rk: &str, now: i64) -> Option<Recipient> {
        let current = self.sealing.current();
        if current.id() == rk {
            return None;
        }
        let mut map = self.map();
        let sec = map.get_mut(node)?;
        if let Some((key, at)) = &sec.told {
            if key == current.id() && now - at < TELL_EVERY_MS {
                return None;
            }
        }
        sec.told = Some((current.id().to_owned(), now));
        Some(current)
    }

    /// An ephemeral key to seal for `node`'s current sealing key (a new one
    /// when its key changed or the old one served its time).
    pub async fn outgoing(&self, node: &str) -> Result<Option<Outgoing>, StoreError> {
        if self.peer(node).await?.is_none() {
            return Ok(None);
        }
        let now = now_ms();
        let mut map = self.map();
        let Some(sec) = map.get_mut(node) else {
            return Ok(None);
        };
        let to = sec.peer.recipient();
        match &sec.out {
            Some(out) if !out.stale(to, now) => Ok(Some(out.clone())),
            _ => {
                let mut eph = [0u8; 32];
                getrandom::fill(&mut eph).expect("OS random source");
                let out = Outgoing::new(to, eph, now);
                sec.out = Some(out.clone());
                Ok(Some(out))
            }
        }
    }

    /// `node` announced its sealing key (base64): seal for it from now on.
    pub async fn announced(&self, node: &str, key: &str) -> Result<(), StoreError> {
        let Ok(to) = Recipient::parse(key) else {
            tracing::warn!(%node, "a node announced a sealing key that does not parse; kept the old one");
            return Ok(());
        };
        let Some(peer) = self.peer(node).await? else {
            return Ok(());
        };
        if peer.recipient() == &to {
            return Ok(());
        }
        self.store.set_seal_key(node, key).await?;
        if let Some(sec) = self.map().get_mut(node) {
            sec.peer = sec.peer.with_recipient(to.clone());
            sec.out = None;
        }
        tracing::info!(%node, key = to.id(), "node's new sealing key");
        Ok(())
    }

    /// Forget boxes agreed with keys of ours that were erased.
    pub fn erased(&self, ids: &[String]) {
        for sec in self.map().values_mut() {
            sec.boxes.retain(|(rk, _, _)| !ids.contains(rk));
        }
    }

    /// Accept `seq` from `node` in its replay window.
    fn accept(&self, node: &str, seq: u64) -> Result<(), EnvelopeError> {
        let mut nodes = self.map();
        let sec = nodes.get_mut(node).ok_or(EnvelopeError::BadKey)?;
        sec.window.accept(seq)
    }

    pub fn forget(&self, node: &str) {
        self.map().remove(node);
    }
}

/// Records the fleet's online/offline changes: log, gauge, history, and a
/// word to the desk (agents see their branch drop).
#[derive(Clone)]
pub struct Presence {
    pub fleet: Arc<Mutex<Fleet>>,
    store: Store,
    metrics: Arc<Metrics>,
    handoff: Handoff,
    history_limit: usize,
}

impl Presence {
    pub fn new(
        fleet: Arc<Mutex<Fleet>>,
        store: Store,
        metrics: Arc<Metrics>,
        handoff: Handoff,
        history_limit: usize,
    ) -> Presence {
        Presence {
            fleet,
            store,
            metrics,
            handoff,
            history_limit,
        }
    }

    pub fn fleet(&self) -> std::sync::MutexGuard<'_, Fleet> {
        self.fleet.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub async fn record(&self, ts: Vec<Transition>) {
        if ts.is_empty() {
            return;
        }
        let mut recorded = Vec::with_capacity(ts.len());
        for t in ts {
            let (node, online, reason) = match t {
                Transition::Online { node, reason } => (node, true, reason),
                Transition::Offline { node, reason } => (node, false, reason),
            };
            if online {
                tracing::info!(%node, reason, "node online");
                self.metrics.nodes_online.inc();
            } else {
                tracing::info!(%node, reason, "node offline");
                self.metrics.nodes_online.dec();
            }
            self.handoff
                .input(In::NodeStatus {
                    node: node.clone(),
                    online,
                })
                .await;
            recorded.push(Recorded {
                node,
                online,
                reason,
            });
        }
        if let Err(e) = self
            .store
            .record_transitions(recorded, now_ms(), self.history_limit)
            .await
        {
            tracing::error!(error = %e, "recording fleet transitions failed");
        }
    }
}

/// Everything the link's tasks share.
#[derive(Clone)]
pub struct Link {
    pub config: crate::config::Config,
    pub store: Store,
    pub identity: edgedesk_common::envelope::Identity,
    pub keys: Keys,
    pub presence: Presence,
    pub downlink: Downlink,
    pub handoff: Handoff,
    pub metrics: Arc<Metrics>,
    pub creds: crate::broker::Credentials,
    /// Node accounts on an external Mosquitto: its answers arrive here, and
    /// a revoked node's account goes.
    pub dynsec: Option<Arc<crate::broker::dynsec::Dynsec>>,
    /// A standby taking a share of node traffic (`mqtt.shared_group`):
    /// presence goes to the active controller this way (its acknowledgements
    /// and desk inputs through the downlink and desk queues it forwards).
    pub relay: Option<relay::Relay>,
}
