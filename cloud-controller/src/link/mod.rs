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
pub mod transport;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use edgedesk_common::envelope::{Identity, PeerBox, ReplayWindow};

use crate::downlink::{Downlink, now_ms};
use crate::fleet::{Fleet, Transition};
use crate::handoff::{Handoff, In};
use crate::metrics::Metrics;
use crate::store::nodes::Transition as Recorded;
use crate::store::{Store, StoreError};

/// What the controller knows about a node's keys and replay state.
struct NodeSec {
    peer: PeerBox,
    window: ReplayWindow,
}

/// Nodes' public keys, cached since the node (or a send to it) last needed
/// them (every message would else cost a store read), with their replay
/// windows.
///
/// Unknown and revoked ids cost no store read: the broker credentials are
/// the in-memory list of enrolled, unrevoked nodes, checked first (the
/// negative cache), and again under the map's lock before a looked-up key is
/// cached, so a node revoked during the lookup is not cached (revocation
/// removes the credentials before the cached keys).
#[derive(Clone)]
pub struct Keys {
    store: Store,
    /// The controller's own keys (the sealing agreement is made with them).
    me: Identity,
    creds: crate::broker::Credentials,
    nodes: Arc<Mutex<HashMap<String, NodeSec>>>,
}

impl Keys {
    pub fn new(store: Store, me: Identity, creds: crate::broker::Credentials) -> Keys {
        Keys {
            store,
            me,
            creds,
            nodes: Arc::default(),
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, NodeSec>> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `None` for an unknown or revoked node, or one whose stored keys do
    /// not parse (they were checked at enrolment).
    pub async fn peer(&self, node: &str) -> Result<Option<PeerBox>, StoreError> {
        if let Some(sec) = self.map().get(node) {
            return Ok(Some(sec.peer.clone()));
        }
        if !self.creds.contains(node) {
            return Ok(None);
        }
        let Some((row, peer)) = self
            .store
            .node(node)
            .await?
            .filter(|r| r.revoked_at.is_none())
            .and_then(|r| r.keys.parse().ok().map(|p| (r, p)))
        else {
            return Ok(None);
        };
        let peer = PeerBox::new(&self.me, peer);
        let mut map = self.map();
        if !self.creds.contains(node) {
            return Ok(None); // revoked while we read
        }
        map.entry(node.to_owned()).or_insert_with(|| NodeSec {
            peer: peer.clone(),
            window: ReplayWindow::starting_at(row.seq_high),
        });
        Ok(Some(peer))
    }

    /// Accept `seq` from `node` in its replay window.
    fn accept(&self, node: &str, seq: u64) -> Result<(), edgedesk_common::envelope::EnvelopeError> {
        let mut nodes = self.map();
        let sec = nodes
            .get_mut(node)
            .ok_or(edgedesk_common::envelope::EnvelopeError::BadKey)?;
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
    pub controller_keys: edgedesk_common::envelope::PublicKeys,
    pub keys: Keys,
    pub presence: Presence,
    pub downlink: Downlink,
    pub handoff: Handoff,
    pub metrics: Arc<Metrics>,
    pub creds: crate::broker::Credentials,
}
