//! Live handoff on the controller (issue 4 groundwork): escalations from node
//! outboxes feed the routing state machine; its assignments become
//! `agent_joined` commands to the node and `assigned` frames on the agent's
//! console WebSocket; lines travel both ways (agent → command queue → node;
//! visitor → outbox event → agent), so nothing either side types is lost
//! when a branch link drops.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use edgedesk_common::event::{Event, EventBody};
use edgedesk_common::sync::command as cmd;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::agents::AgentRow;
use crate::chats::{self, ChatView, Line};
use crate::link::{Hub, now_ms};
use crate::routing::{Action, Input, Presence, Router};

/// Frames to an agent's console.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ConsoleOut {
    /// A chat is now yours (with the whole conversation so far).
    Assigned {
        chat: ChatView,
    },
    Line {
        chat: String,
        line: Line,
    },
    /// The chat left you (transfer, or you went offline).
    Requeued {
        chat: String,
    },
    Closed {
        chat: String,
    },
    Typing {
        chat: String,
    },
    /// A branch with one of your chats went offline or came back.
    NodeStatus {
        node: String,
        online: bool,
    },
    Error {
        message: String,
    },
}

/// Frames from an agent's console.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ConsoleIn {
    Presence { state: String },
    Message { chat: String, text: String },
    Typing { chat: String },
    Close { chat: String, resolution: String },
    Transfer { chat: String, to: Option<String> },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentLoad {
    pub id: String,
    pub name: String,
    pub presence: String,
    pub chats: usize,
    pub capacity: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Live {
    pub agents: Vec<AgentLoad>,
    pub waiting: usize,
    pub longest_wait_ms: i64,
}

/// Record what newly stored `events` from `node` mean for chats, tickets and
/// history, in the caller's transaction (the one that stores the events, so
/// an acknowledged event is never half applied).
pub fn project(
    conn: &rusqlite::Connection,
    node: &str,
    events: &[Event],
) -> Result<(), crate::store::StoreError> {
    for e in events {
        match &e.body {
            EventBody::Escalation(x) => {
                chats::escalated(
                    conn,
                    &x.conversation,
                    node,
                    x.lang.as_str(),
                    &x.intents,
                    e.at,
                )?;
                for (i, l) in x.transcript.iter().enumerate() {
                    let key = if l.id > 0 {
                        l.id.to_string()
                    } else {
                        format!("esc-{}-{i}", e.at)
                    };
                    chats::add_line(
                        conn,
                        &x.conversation,
                        &key,
                        l.from.as_str(),
                        None,
                        &l.text,
                        l.at,
                    )?;
                }
            }
            EventBody::ChatLine(l) => {
                let key = l.line.id.to_string();
                chats::add_line(
                    conn,
                    &l.conversation,
                    &key,
                    "visitor",
                    None,
                    &l.line.text,
                    l.line.at,
                )?;
            }
            EventBody::OfflineMessage(m) => {
                crate::tickets::open(
                    conn,
                    &e.id,
                    node,
                    &m.conversation,
                    m.lang.as_str(),
                    &m.name,
                    &m.contact,
                    &m.message,
                    e.at,
                )?;
            }
            EventBody::Rating(r) => chats::rate(conn, &r.conversation, r.score)?,
            EventBody::ConversationSummary(s) if !s.transcript.is_empty() => {
                chats::summarized(conn, node, s)?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Longest line an agent may send.
pub const MAX_LINE: usize = 2000;

pub struct Handoff {
    router: Mutex<Router>,
    /// Console sockets per agent (an agent may have several tabs). Each is
    /// bounded (64); a full or closed socket is dropped — the console reloads
    /// its chats on reconnect.
    sockets: Mutex<HashMap<String, Vec<mpsc::Sender<ConsoleOut>>>>,
    names: Mutex<HashMap<String, String>>,
    /// Node of each live chat (to tell agents when a branch drops).
    chat_nodes: Mutex<HashMap<String, String>>,
}

impl Default for Handoff {
    fn default() -> Self {
        Handoff::new(30_000)
    }
}

impl Handoff {
    pub fn new(grace_ms: i64) -> Handoff {
        Handoff {
            router: Mutex::new(Router::new(grace_ms)),
            sockets: Mutex::default(),
            names: Mutex::default(),
            chat_nodes: Mutex::default(),
        }
    }

    fn step(&self, input: Input) -> Vec<Action> {
        self.router
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .step(input)
    }

    fn push(&self, agent: &str, frame: ConsoleOut) {
        let mut sockets = self.sockets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(list) = sockets.get_mut(agent) {
            list.retain(|tx| tx.try_send(frame.clone()).is_ok());
        }
    }

    /// Live numbers for the supervisor dashboard.
    pub fn snapshot(&self, now: i64) -> Live {
        let r = self.router.lock().unwrap_or_else(|p| p.into_inner());
        let names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        let queue = r.queue();
        Live {
            agents: r
                .agents()
                .map(|(id, a)| AgentLoad {
                    id: id.clone(),
                    name: names.get(id).cloned().unwrap_or_default(),
                    presence: format!("{:?}", a.presence).to_lowercase(),
                    chats: a.chats.len(),
                    capacity: a.capacity,
                })
                .collect(),
            waiting: queue.len(),
            longest_wait_ms: queue
                .first()
                .map(|(_, c)| now - c.waiting_since)
                .unwrap_or(0),
        }
    }

    /// The visitor of `chat` is typing: tell its agent.
    pub fn visitor_typing(&self, chat: &str) {
        if let Some(agent) = self.holder(chat) {
            self.push(
                &agent,
                ConsoleOut::Typing {
                    chat: chat.to_owned(),
                },
            );
        }
    }

    /// A branch went offline or came back: tell the agents holding its chats.
    pub fn node_status(&self, node: &str, online: bool) {
        let agents: BTreeSet<String> = {
            let nodes = self.chat_nodes.lock().unwrap_or_else(|p| p.into_inner());
            let r = self.router.lock().unwrap_or_else(|p| p.into_inner());
            nodes
                .iter()
                .filter(|(_, n)| n.as_str() == node)
                .filter_map(|(chat, _)| r.chat(chat).and_then(|c| c.agent.clone()))
                .collect()
        };
        for a in agents {
            self.push(
                &a,
                ConsoleOut::NodeStatus {
                    node: node.to_owned(),
                    online,
                },
            );
        }
    }

    /// The agent whose chat `chat` is, per the router.
    pub fn holder(&self, chat: &str) -> Option<String> {
        self.router
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .chat(chat)
            .and_then(|c| c.agent.clone())
    }

    /// A console socket opened for `agent`.
    pub async fn connect(&self, hub: &Hub, agent: &AgentRow, tx: mpsc::Sender<ConsoleOut>) {
        self.names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(agent.id.clone(), agent.display_name.clone());
        self.sockets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(agent.id.clone())
            .or_default()
            .push(tx);
        let languages: BTreeSet<String> = agent.languages.iter().cloned().collect();
        let mut actions = self.step(Input::AgentUpsert {
            agent: agent.id.clone(),
            capacity: agent.capacity as usize,
            languages,
        });
        actions.extend(self.step(Input::Reconnected {
            agent: agent.id.clone(),
        }));
        // Re-send the chats this agent holds.
        let held: Vec<String> = {
            let r = self.router.lock().unwrap_or_else(|p| p.into_inner());
            r.agent(&agent.id)
                .map(|a| a.chats.iter().cloned().collect())
                .unwrap_or_default()
        };
        for chat in held {
            if let Some(view) = self.view(hub, &chat).await {
                self.push(&agent.id, ConsoleOut::Assigned { chat: view });
            }
        }
        self.execute(hub, actions).await;
    }

    /// The console socket closed; the agent keeps their chats for the grace period.
    pub fn disconnect(&self, agent: &str, tx: &mpsc::Sender<ConsoleOut>) {
        let now_empty = {
            let mut sockets = self.sockets.lock().unwrap_or_else(|p| p.into_inner());
            let list = sockets.entry(agent.to_owned()).or_default();
            list.retain(|t| !t.same_channel(tx));
            list.is_empty()
        };
        if now_empty {
            self.step(Input::Disconnected {
                agent: agent.to_owned(),
                at: now_ms(),
            });
        }
    }

    pub async fn tick(&self, hub: &Hub) {
        let actions = self.step(Input::Tick { now: now_ms() });
        self.execute(hub, actions).await;
    }

    async fn view(&self, hub: &Hub, chat: &str) -> Option<ChatView> {
        let c = chat.to_owned();
        hub.db
            .call(move |conn| chats::get(conn, &c))
            .await
            .ok()
            .flatten()
    }

    /// Carry out the router's decisions.
    async fn execute(&self, hub: &Hub, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Assign { chat, agent } => {
                    let (c, a, now) = (chat.clone(), agent.clone(), now_ms());
                    if let Err(e) = hub
                        .db
                        .call(move |conn| chats::assign(conn, &c, &a, now))
                        .await
                    {
                        tracing::error!(error = %e, "recording an assignment failed");
                    }
                    let Some(view) = self.view(hub, &chat).await else {
                        continue;
                    };
                    let name = self
                        .names
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get(&agent)
                        .cloned()
                        .unwrap_or_default();
                    let args = serde_json::json!(cmd::AgentJoined {
                        conversation: chat.clone(),
                        agent_name: name
                    });
                    if let Err(e) = hub
                        .queue_command(&view.node_id, cmd::AGENT_JOINED, args, Some(&chat))
                        .await
                    {
                        tracing::error!(error = %e, "queueing agent_joined failed");
                    }
                    tracing::info!(%chat, %agent, "chat assigned");
                    self.push(&agent, ConsoleOut::Assigned { chat: view });
                }
                Action::Requeued { chat, from } => {
                    let c = chat.clone();
                    let _ = hub.db.call(move |conn| chats::requeue(conn, &c)).await;
                    self.push(&from, ConsoleOut::Requeued { chat: chat.clone() });
                    if let Some(view) = self.view(hub, &chat).await {
                        let args = serde_json::json!(cmd::AgentLeft {
                            conversation: chat.clone()
                        });
                        let _ = hub
                            .queue_command(&view.node_id, cmd::AGENT_LEFT, args, Some(&chat))
                            .await;
                    }
                }
                Action::Refused { reason } => tracing::debug!(%reason, "routing refused an input"),
            }
        }
    }

    /// Newly stored events from a node's outbox that concern live chats
    /// (already projected into the chat store by [`project`], in the
    /// transaction that recorded them): route escalations, push lines.
    pub async fn on_events(&self, hub: &Hub, node: &str, events: &[Event]) {
        for e in events {
            match &e.body {
                EventBody::Escalation(x) => {
                    self.chat_nodes
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(x.conversation.clone(), node.to_owned());
                    let actions = self.step(Input::Escalated {
                        chat: x.conversation.clone(),
                        lang: x.lang.as_str().to_owned(),
                        at: e.at,
                        bound_to: None,
                    });
                    self.execute(hub, actions).await;
                }
                EventBody::ChatLine(l) => {
                    if let Some(agent) = self.holder(&l.conversation) {
                        let line = Line {
                            sender: "visitor".into(),
                            text: l.line.text.clone(),
                            at: l.line.at,
                        };
                        self.push(
                            &agent,
                            ConsoleOut::Line {
                                chat: l.conversation.clone(),
                                line,
                            },
                        );
                    }
                }
                EventBody::ConversationSummary(s) if s.escalated => {
                    // The visitor ended an escalated conversation: release the agent.
                    if let Some(agent) = self.holder(&s.conversation) {
                        let (c, now) = (s.conversation.clone(), now_ms());
                        let _ = hub
                            .db
                            .call(move |conn| chats::close(conn, &c, "visitor left", now))
                            .await;
                        let actions = self.step(Input::Closed {
                            chat: s.conversation.clone(),
                        });
                        self.push(
                            &agent,
                            ConsoleOut::Closed {
                                chat: s.conversation.clone(),
                            },
                        );
                        self.execute(hub, actions).await;
                    }
                }
                _ => {}
            }
        }
    }

    /// A frame from `agent`'s console.
    pub async fn on_console(
        &self,
        hub: &Hub,
        agent: &AgentRow,
        frame: ConsoleIn,
    ) -> Result<(), String> {
        let mine = |chat: &str| self.holder(chat).as_deref() == Some(agent.id.as_str());
        match frame {
            ConsoleIn::Presence { state } => {
                let presence = match state.as_str() {
                    "online" => Presence::Online,
                    "away" => Presence::Away,
                    "offline" => Presence::Offline,
                    other => return Err(format!("unknown presence {other:?}")),
                };
                let actions = self.step(Input::SetPresence {
                    agent: agent.id.clone(),
                    presence,
                });
                self.execute(hub, actions).await;
            }
            ConsoleIn::Message { chat, text } => {
                let text = text.trim().to_owned();
                if text.is_empty() || text.chars().count() > MAX_LINE {
                    return Err(format!("a message must be 1 to {MAX_LINE} characters"));
                }
                if !mine(&chat) {
                    return Err("that chat is not assigned to you".into());
                }
                let view = self.view(hub, &chat).await.ok_or("unknown chat")?;
                let (c, a, t, now) = (chat.clone(), agent.id.clone(), text.clone(), now_ms());
                let key = uuid::Uuid::new_v4().to_string();
                hub.db
                    .call(move |conn| chats::add_line(conn, &c, &key, "agent", Some(&a), &t, now))
                    .await
                    .map_err(|e| e.to_string())?;
                let args = serde_json::json!(cmd::AgentMessage {
                    conversation: chat.clone(),
                    agent_name: agent.display_name.clone(),
                    text
                });
                hub.queue_command(&view.node_id, cmd::AGENT_MESSAGE, args, Some(&chat))
                    .await
                    .map_err(|e| e.to_string())?;
            }
            ConsoleIn::Typing { chat } => {
                if mine(&chat) {
                    if let Some(view) = self.view(hub, &chat).await {
                        let _ = hub
                            .send(
                                &view.node_id,
                                &edgedesk_common::sync::Down::Typing { conversation: chat },
                            )
                            .await;
                    }
                }
            }
            ConsoleIn::Close { chat, resolution } => {
                if !mine(&chat) {
                    return Err("that chat is not assigned to you".into());
                }
                let view = self.view(hub, &chat).await.ok_or("unknown chat")?;
                let (c, r, now) = (
                    chat.clone(),
                    resolution.chars().take(MAX_LINE).collect::<String>(),
                    now_ms(),
                );
                hub.db
                    .call(move |conn| chats::close(conn, &c, &r, now))
                    .await
                    .map_err(|e| e.to_string())?;
                let args = serde_json::json!(cmd::AgentClosed {
                    conversation: chat.clone()
                });
                hub.queue_command(&view.node_id, cmd::AGENT_CLOSED, args, Some(&chat))
                    .await
                    .map_err(|e| e.to_string())?;
                let actions = self.step(Input::Closed { chat: chat.clone() });
                self.push(&agent.id, ConsoleOut::Closed { chat });
                self.execute(hub, actions).await;
            }
            ConsoleIn::Transfer { chat, to } => {
                if !mine(&chat) {
                    return Err("that chat is not assigned to you".into());
                }
                let to_someone = to.is_some();
                let actions = self.step(Input::Transfer {
                    chat: chat.clone(),
                    to,
                });
                if let Some(Action::Refused { reason }) = actions.first() {
                    return Err(reason.clone());
                }
                if to_someone {
                    // The router hands it straight on; tell the sender it left them.
                    self.push(&agent.id, ConsoleOut::Requeued { chat });
                }
                self.execute(hub, actions).await;
            }
        }
        Ok(())
    }
}
