//! The way down to nodes, as the rest of the controller sees it: queue a
//! command (stored until the node acknowledges it, sent at once when the
//! node is online), resend what is pending, show an agent typing, forget a
//! revoked node. It never seals or publishes itself: it hands [`Outgoing`]
//! messages to the link's publisher, so services need no transport.
//!
//! Queue policy: bounded (4096). When full, an outgoing message is dropped
//! and counted; commands are already stored and go again with the next
//! resend (on the node's `hello`, its resend request, or the retry timer),
//! typing signals are ephemeral.

use std::sync::{Arc, Mutex};

use edgedesk_common::sync::{Command, CommandBody, Down, Stream};
use tokio::sync::mpsc;

use crate::fleet::Fleet;
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};

pub use edgedesk_support::now_ms;

/// For the link's publisher.
#[derive(Debug)]
pub enum Outgoing {
    /// Seal `down` for `node` and publish it.
    Send { node: String, down: Down },
    /// `node` was revoked: drop its cached keys and its live state.
    Forget { node: String },
}

/// Capacity of the outgoing queue.
pub const OUTGOING_QUEUE: usize = 4096;

/// Cheap to clone.
#[derive(Clone)]
pub struct Downlink {
    store: Store,
    fleet: Arc<Mutex<Fleet>>,
    tx: mpsc::Sender<Outgoing>,
    metrics: Arc<Metrics>,
}

impl Downlink {
    pub fn new(
        store: Store,
        fleet: Arc<Mutex<Fleet>>,
        tx: mpsc::Sender<Outgoing>,
        metrics: Arc<Metrics>,
    ) -> Downlink {
        Downlink {
            store,
            fleet,
            tx,
            metrics,
        }
    }

    /// Whether `node` is online now (fleet state machine).
    pub fn is_online(&self, node: &str) -> bool {
        self.fleet
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_online(node)
    }

    fn offer(&self, out: Outgoing) -> bool {
        if self.tx.try_send(out).is_err() {
            self.metrics.outgoing_dropped.inc();
            return false;
        }
        true
    }

    /// A new command for `node` (with `id`, else a fresh one) and, if the
    /// node is online, when it is sent (now): for callers that store it in
    /// a transaction of their own and then hand it to [`Downlink::sent`].
    pub fn prepare(
        &self,
        node: &str,
        body: CommandBody,
        stream: Option<&str>,
        id: Option<String>,
    ) -> (Command, Option<i64>) {
        let cmd = Command {
            id: id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            body,
            issued_at: now_ms(),
            stream: stream.map(|key| Stream {
                key: key.to_owned(),
                seq: 0,
            }),
            trace: None,
        };
        (cmd, self.is_online(node).then(now_ms))
    }

    /// Send a stored command that [`Downlink::prepare`] marked sent.
    pub fn sent(&self, node: &str, cmd: Command) {
        if self.offer(Outgoing::Send {
            node: node.to_owned(),
            down: Down::Command(cmd),
        }) {
            self.metrics.commands_sent.inc();
        }
    }

    /// Queue a command for `node` (kept until acknowledged) and send it now
    /// if the node is online. Commands with the same `stream` key are
    /// executed by the node in the order they were queued.
    pub async fn queue(
        &self,
        node: &str,
        body: CommandBody,
        stream: Option<&str>,
    ) -> Result<Command, StoreError> {
        let (cmd, sent_at) = self.prepare(node, body, stream, None);
        // Recorded as sent in the same write as the enqueue.
        let cmd = self.store.enqueue_command(node, cmd, sent_at).await?;
        if sent_at.is_some() {
            self.sent(node, cmd.clone());
        }
        Ok(cmd)
    }

    /// Send the unacknowledged commands of `node` again, in queue order:
    /// all of them, or with `sent_before` only those not sent since (the
    /// retry timer must not resend what is still on its way).
    pub async fn send_pending(
        &self,
        node: &str,
        sent_before: Option<i64>,
    ) -> Result<(), StoreError> {
        let pending = self.store.pending_commands(node, sent_before).await?;
        if pending.is_empty() {
            return Ok(());
        }
        let mut sent = Vec::with_capacity(pending.len());
        for cmd in pending {
            let id = cmd.id.clone();
            if !self.offer(Outgoing::Send {
                node: node.to_owned(),
                down: Down::Command(cmd),
            }) {
                break;
            }
            self.metrics.commands_sent.inc();
            sent.push(id);
        }
        self.store.mark_sent(sent, now_ms()).await
    }

    /// Where a waiting visitor stands (ephemeral).
    pub fn queue_status(&self, node: &str, conversation: &str, position: u32, agents_online: u32) {
        self.offer(Outgoing::Send {
            node: node.to_owned(),
            down: Down::QueueStatus {
                conversation: conversation.to_owned(),
                position,
                agents_online,
            },
        });
    }

    /// The agent is typing in `conversation` on `node` (ephemeral).
    pub fn typing(&self, node: &str, conversation: &str) {
        self.offer(Outgoing::Send {
            node: node.to_owned(),
            down: Down::Typing {
                conversation: conversation.to_owned(),
            },
        });
    }

    /// Tell the link that `node` was revoked.
    pub async fn forget(&self, node: &str) {
        // Not dropped when busy: a revocation must reach the link.
        let _ = self
            .tx
            .send(Outgoing::Forget {
                node: node.to_owned(),
            })
            .await;
    }

    /// Send `down` to `node` (acknowledgements; the link's own use).
    pub fn send(&self, node: &str, down: Down) -> bool {
        self.offer(Outgoing::Send {
            node: node.to_owned(),
            down,
        })
    }
}
