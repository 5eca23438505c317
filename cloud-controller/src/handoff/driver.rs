//! The desk's task: owns the [`Desk`] and the agents' console sockets, and
//! carries out what the desk decides.
//!
//! Group commit: the task takes whatever messages have queued up (up to
//! [`BATCH`]), steps the desk through all of them, writes every chat change
//! and queues every command of the batch in one store transaction, and only
//! then sends the commands, pushes to consoles and answers console frames, in
//! the order the desk decided them. A failed commit answers the batch's
//! console frames with the error instead of the desk's verdict.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use edgedesk_common::sync::Command;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{ConsoleOut, Desk, Do, In, Msg};
use crate::downlink::{Downlink, now_ms};
use crate::metrics::Metrics;
use crate::store::{ChatWrite, Store};

/// Capacity of each console socket's queue. Policy: a full or closed socket
/// is dropped — the console reloads its chats when it reconnects.
pub const SOCKET_QUEUE: usize = 64;

/// Most messages stepped through and committed together.
pub const BATCH: usize = 128;

/// What to do once the batch's transaction has committed, in order.
enum After {
    /// Send the `n`-th command of the batch to `node`.
    Send {
        node: String,
        n: usize,
    },
    Typing {
        node: String,
        chat: String,
    },
    QueueStatus {
        node: String,
        chat: String,
        position: u32,
        agents_online: u32,
    },
    Push {
        agent: String,
        frame: ConsoleOut,
        trace: Option<String>,
    },
    PushAssigned {
        agent: String,
        chat: String,
        trace: Option<String>,
    },
    Reply {
        to: oneshot::Sender<Result<(), String>>,
        verdict: Result<(), String>,
    },
}

#[derive(Default)]
struct Plan {
    writes: Vec<ChatWrite>,
    commands: Vec<(String, Command, Option<i64>)>,
    after: Vec<After>,
}

pub struct Driver {
    pub desk: Desk,
    pub store: Store,
    pub downlink: Downlink,
    pub metrics: Arc<Metrics>,
    sockets: HashMap<String, Vec<mpsc::Sender<ConsoleOut>>>,
    /// Per chat, the trace context of the newest traced visitor input's
    /// routing span: an agent's reply continues that trace. Best effort and
    /// bounded: at [`MAX_TRACES`] chats it starts afresh.
    traces: HashMap<String, String>,
}

/// Most chats whose trace context the driver keeps.
const MAX_TRACES: usize = 10_000;

/// The chat a traced input is about.
fn traced_chat(input: &In) -> Option<&str> {
    match input {
        In::Escalated { chat, .. } | In::VisitorLine { chat, .. } => Some(chat),
        _ => None,
    }
}

impl Driver {
    pub fn new(desk: Desk, store: Store, downlink: Downlink, metrics: Arc<Metrics>) -> Driver {
        Driver {
            desk,
            store,
            downlink,
            metrics,
            sockets: HashMap::new(),
            traces: HashMap::new(),
        }
    }

    /// Serve the desk until `shutdown`; ticks once a second. First the desk
    /// is rebuilt from the store: chats that were waiting wait again, chats
    /// that were assigned stay with their agent (whose console has the
    /// reconnect grace to come back).
    pub async fn run(mut self, mut rx: mpsc::Receiver<Msg>, shutdown: CancellationToken) {
        match self.store.live_chats().await {
            Ok(chats) => {
                if !chats.is_empty() {
                    let held = chats.iter().filter(|c| c.agent.is_some()).count();
                    tracing::info!(
                        waiting = chats.len() - held,
                        held,
                        "live chats restored from the store"
                    );
                }
                self.handle([Msg::Input(In::Restore { chats })]).await;
            }
            Err(e) => tracing::error!(error = %e, "restoring live chats failed"),
        }
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut msgs = Vec::with_capacity(BATCH);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => msgs.push(Msg::Input(In::Tick)),
                n = rx.recv_many(&mut msgs, BATCH) => if n == 0 { break },
            }
            self.handle(msgs.drain(..)).await;
        }
    }

    /// Step the desk through `msgs` and carry the outcome out.
    pub async fn handle(&mut self, msgs: impl IntoIterator<Item = Msg>) {
        let mut plan = Plan::default();
        for msg in msgs {
            let now = now_ms();
            match msg {
                Msg::Input(input) => {
                    let todo = self.desk.step(input, now);
                    self.plan(todo, None, None, &mut plan);
                }
                Msg::Traced { input, trace } => {
                    let span = edgedesk_support::traced_span!(
                        "controller.route",
                        Some(&trace),
                        chat = traced_chat(&input).unwrap_or_default()
                    );
                    let here = edgedesk_support::telemetry::traceparent(&span);
                    if let (Some(chat), Some(here)) = (traced_chat(&input), &here) {
                        if self.traces.len() >= MAX_TRACES {
                            self.traces.clear();
                        }
                        self.traces.insert(chat.to_owned(), here.clone());
                    }
                    let todo = span.in_scope(|| self.desk.step(input, now));
                    self.plan(todo, None, here, &mut plan);
                }
                Msg::Console {
                    agent,
                    frame,
                    reply,
                } => {
                    // An agent's line continues the trace of the chat's
                    // newest traced visitor input.
                    let parent = match &frame {
                        super::ConsoleIn::Message { chat, .. } => self.traces.get(chat).cloned(),
                        _ => None,
                    };
                    let trace = parent.and_then(|parent| {
                        let span = edgedesk_support::traced_span!(
                            "console.reply",
                            Some(&parent),
                            agent = %agent.id
                        );
                        edgedesk_support::telemetry::traceparent(&span)
                    });
                    let todo = self.desk.step(In::Console { agent, frame }, now);
                    self.plan(todo, Some(reply), trace, &mut plan);
                }
                Msg::Connect { agent, tx } => {
                    self.sockets.entry(agent.id.clone()).or_default().push(tx);
                    // Every new console gets the agent's chats again.
                    let todo = self.desk.step(In::Connected { agent }, now);
                    self.plan(todo, None, None, &mut plan);
                }
                Msg::Disconnect { agent, tx } => {
                    let now_empty = {
                        let list = self.sockets.entry(agent.clone()).or_default();
                        list.retain(|t| !t.same_channel(&tx));
                        list.is_empty()
                    };
                    if now_empty {
                        self.sockets.remove(&agent);
                        let todo = self.desk.step(In::Disconnected { agent }, now);
                        self.plan(todo, None, None, &mut plan);
                    }
                }
                Msg::Snapshot(reply) => {
                    let _ = reply.send(self.desk.snapshot(now));
                }
            }
        }
        self.commit(plan).await;
    }

    /// Queue what the desk decided; `trace`: the trace context its commands
    /// and console pushes continue.
    fn plan(
        &self,
        todo: Vec<Do>,
        mut reply: Option<oneshot::Sender<Result<(), String>>>,
        trace: Option<String>,
        plan: &mut Plan,
    ) {
        for d in todo {
            match d {
                Do::Store(write) => plan.writes.push(write),
                Do::Command {
                    node,
                    chat,
                    body,
                    id,
                } => {
                    let (mut cmd, sent_at) = self.downlink.prepare(&node, body, Some(&chat), id);
                    cmd.trace = trace.clone();
                    if sent_at.is_some() {
                        plan.after.push(After::Send {
                            node: node.clone(),
                            n: plan.commands.len(),
                        });
                    }
                    plan.commands.push((node, cmd, sent_at));
                }
                Do::Typing { node, chat } => plan.after.push(After::Typing { node, chat }),
                Do::QueueStatus {
                    node,
                    chat,
                    position,
                    agents_online,
                } => plan.after.push(After::QueueStatus {
                    node,
                    chat,
                    position,
                    agents_online,
                }),
                Do::Push { agent, frame } => plan.after.push(After::Push {
                    agent,
                    frame,
                    trace: trace.clone(),
                }),
                Do::PushAssigned { agent, chat } => plan.after.push(After::PushAssigned {
                    agent,
                    chat,
                    trace: trace.clone(),
                }),
                Do::Reply(verdict) => {
                    if let Some(to) = reply.take() {
                        plan.after.push(After::Reply { to, verdict });
                    }
                }
            }
        }
    }

    async fn commit(&mut self, plan: Plan) {
        let Plan {
            writes,
            commands,
            after,
        } = plan;
        let (queued, failed) = if writes.is_empty() && commands.is_empty() {
            (Vec::new(), None)
        } else {
            let nodes: Vec<String> = commands.iter().map(|(n, _, _)| n.clone()).collect();
            match self.store.chat_writes(writes, commands).await {
                Ok(q) => (nodes.into_iter().zip(q).collect(), None),
                Err(e) => {
                    tracing::error!(error = %e, "recording live-chat changes failed");
                    (Vec::new(), Some(e.to_string()))
                }
            }
        };
        let mut queued: Vec<Option<(String, Command)>> = queued.into_iter().map(Some).collect();
        for a in after {
            match a {
                After::Send { node, n } => {
                    if let Some((_, cmd)) = queued.get_mut(n).and_then(Option::take) {
                        self.downlink.sent(&node, cmd);
                    }
                }
                After::Typing { node, chat } => self.downlink.typing(&node, &chat),
                After::QueueStatus {
                    node,
                    chat,
                    position,
                    agents_online,
                } => self
                    .downlink
                    .queue_status(&node, &chat, position, agents_online),
                After::Push {
                    agent,
                    frame,
                    trace,
                } => push_span(&agent, trace.as_deref()).in_scope(|| self.push(&agent, frame)),
                After::PushAssigned { agent, chat, trace } => {
                    let span = push_span(&agent, trace.as_deref());
                    match self.store.chat(&chat).instrument(span.clone()).await {
                        Ok(Some(view)) => span.in_scope(|| {
                            tracing::info!(%chat, %agent, "chat assigned");
                            self.push(
                                &agent,
                                ConsoleOut::Assigned {
                                    chat: Box::new(view),
                                },
                            );
                        }),
                        Ok(None) => tracing::error!(%chat, "an assigned chat is not stored"),
                        Err(e) => {
                            tracing::error!(%chat, error = %e, "loading an assigned chat failed")
                        }
                    }
                }
                After::Reply { to, verdict } => {
                    let _ = to.send(match &failed {
                        Some(e) => Err(e.clone()),
                        None => verdict,
                    });
                }
            }
        }
    }

    fn push(&mut self, agent: &str, frame: ConsoleOut) {
        if let Some(list) = self.sockets.get_mut(agent) {
            list.retain(|tx| tx.try_send(frame.clone()).is_ok());
        }
    }
}

/// The span of a push to an agent's console: a child of `trace` when the
/// push continues one, else a span that is not exported.
fn push_span(agent: &str, trace: Option<&str>) -> tracing::Span {
    match trace {
        Some(trace) => edgedesk_support::traced_span!("console.push", Some(trace), agent = %agent),
        None => tracing::Span::none(),
    }
}
