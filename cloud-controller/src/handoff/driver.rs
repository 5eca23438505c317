//! The desk's task: owns the [`Desk`] and the agents' console sockets, and
//! carries out what each step decides, in order. An I/O failure answers the
//! console frame that caused it with the error instead of the desk's verdict.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{ConsoleOut, Desk, Do, In, Msg, StoreOp};
use crate::downlink::{Downlink, now_ms};
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};

/// Capacity of each console socket's queue. Policy: a full or closed socket
/// is dropped — the console reloads its chats when it reconnects.
pub const SOCKET_QUEUE: usize = 64;

pub struct Driver {
    pub desk: Desk,
    pub store: Store,
    pub downlink: Downlink,
    pub metrics: Arc<Metrics>,
    sockets: HashMap<String, Vec<mpsc::Sender<ConsoleOut>>>,
}

impl Driver {
    pub fn new(desk: Desk, store: Store, downlink: Downlink, metrics: Arc<Metrics>) -> Driver {
        Driver {
            desk,
            store,
            downlink,
            metrics,
            sockets: HashMap::new(),
        }
    }

    /// Serve the desk until `shutdown`; ticks once a second.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Msg>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let msg = tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => Msg::Input(In::Tick),
                m = rx.recv() => match m { Some(m) => m, None => break },
            };
            self.handle(msg).await;
        }
    }

    pub async fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Input(input) => {
                let todo = self.desk.step(input, now_ms());
                self.carry_out(todo, None).await;
            }
            Msg::Console {
                agent,
                frame,
                reply,
            } => {
                let todo = self.desk.step(In::Console { agent, frame }, now_ms());
                self.carry_out(todo, Some(reply)).await;
            }
            Msg::Connect { agent, tx } => {
                let list = self.sockets.entry(agent.id.clone()).or_default();
                list.push(tx);
                // Every new console gets the agent's chats again.
                let todo = self.desk.step(In::Connected { agent }, now_ms());
                self.carry_out(todo, None).await;
            }
            Msg::Disconnect { agent, tx } => {
                let now_empty = {
                    let list = self.sockets.entry(agent.clone()).or_default();
                    list.retain(|t| !t.same_channel(&tx));
                    list.is_empty()
                };
                if now_empty {
                    self.sockets.remove(&agent);
                    let todo = self.desk.step(In::Disconnected { agent }, now_ms());
                    self.carry_out(todo, None).await;
                }
            }
            Msg::Snapshot(reply) => {
                let _ = reply.send(self.desk.snapshot(now_ms()));
            }
        }
    }

    fn push(&mut self, agent: &str, frame: ConsoleOut) {
        if let Some(list) = self.sockets.get_mut(agent) {
            list.retain(|tx| tx.try_send(frame.clone()).is_ok());
        }
    }

    async fn carry_out(
        &mut self,
        todo: Vec<Do>,
        mut reply: Option<tokio::sync::oneshot::Sender<Result<(), String>>>,
    ) {
        let mut failed: Option<String> = None;
        for d in todo {
            match d {
                Do::Store(op) => {
                    if let Err(e) = self.store_op(op).await {
                        tracing::error!(error = %e, "recording a live-chat change failed");
                        failed.get_or_insert_with(|| e.to_string());
                    }
                }
                Do::Command { node, chat, body } => {
                    let kind = body.kind();
                    if let Err(e) = self.downlink.queue(&node, body, Some(&chat)).await {
                        tracing::error!(error = %e, %chat, kind, "queueing a command failed");
                        failed.get_or_insert_with(|| e.to_string());
                    }
                }
                Do::Typing { node, chat } => self.downlink.typing(&node, &chat),
                Do::Push { agent, frame } => self.push(&agent, frame),
                Do::PushAssigned { agent, chat } => match self.store.chat(&chat).await {
                    Ok(Some(view)) => {
                        tracing::info!(%chat, %agent, "chat assigned");
                        self.push(&agent, ConsoleOut::Assigned { chat: view });
                    }
                    Ok(None) => tracing::error!(%chat, "an assigned chat is not stored"),
                    Err(e) => tracing::error!(%chat, error = %e, "loading an assigned chat failed"),
                },
                Do::Reply(verdict) => {
                    if let Some(r) = reply.take() {
                        let _ = r.send(match failed.take() {
                            Some(e) => Err(e),
                            None => verdict,
                        });
                    }
                }
            }
        }
    }

    async fn store_op(&self, op: StoreOp) -> Result<(), StoreError> {
        match op {
            StoreOp::Assign { chat, agent, at } => self.store.chat_assign(&chat, &agent, at).await,
            StoreOp::Requeue { chat } => self.store.chat_requeue(&chat).await,
            StoreOp::Close {
                chat,
                resolution,
                at,
            } => self.store.chat_close(&chat, &resolution, at).await,
            StoreOp::AgentLine {
                chat,
                agent,
                text,
                at,
            } => {
                let key = uuid::Uuid::new_v4().to_string();
                self.store
                    .chat_add_line(&chat, &key, "agent", Some(&agent), &text, at)
                    .await
                    .map(|_| ())
            }
        }
    }
}
