//! The live-chat desk as an I/O-free state machine: escalations, visitor
//! lines, agents' consoles and time go in; what to store, which commands to
//! queue for which node, and what to push to which console come out. The
//! routing decisions themselves are [`Router`]'s; the desk adds what each
//! decision means (the chat's node, the agent's name, the frames) so that
//! one step decides everything and the driver only carries it out.

use std::collections::{BTreeSet, HashMap};

use edgedesk_common::sync::{AgentClosed, AgentJoined, AgentLeft, AgentMessage, CommandBody};

use super::{AgentLoad, ConsoleIn, ConsoleOut, Live, MAX_LINE};
use crate::routing::{self, Presence, Router};
use crate::store::{AgentRow, ChatWrite, Line, LiveChat};

/// What happened.
#[derive(Debug, Clone)]
pub enum In {
    /// A visitor asked for a person (a new escalation event from `node`,
    /// waiting since `at`).
    Escalated {
        chat: String,
        node: String,
        lang: String,
        at: i64,
    },
    /// A visitor's line in a live chat.
    VisitorLine { chat: String, line: Line },
    /// The visitor ended an escalated conversation.
    VisitorEnded { chat: String },
    /// The node took a waiting chat out of the queue (the visitor left,
    /// declined, or left a message instead); `reason` in words.
    Withdrawn { chat: String, reason: String },
    /// The visitor's page closed or opened again.
    VisitorPresence { chat: String, present: bool },
    /// Rebuild from the store at start (and after relays may have been lost,
    /// see `link::relay`): the chats that were waiting or held; those the
    /// desk knows already are left as they are.
    Restore { chats: Vec<LiveChat> },
    VisitorTyping {
        chat: String,
        /// The node that sent it: only the chat's own node is believed.
        node: String,
    },
    /// A branch went offline or came back.
    NodeStatus { node: String, online: bool },
    /// An agent's first console socket opened.
    Connected { agent: AgentRow },
    /// An agent's last console socket closed.
    Disconnected { agent: String },
    /// A frame from an agent's console; the step ends with [`Do::Reply`].
    Console { agent: AgentRow, frame: ConsoleIn },
    /// Time passes (presence grace periods).
    Tick,
}

/// What to do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Do {
    Store(ChatWrite),
    /// Queue a command for the chat's node, in the chat's stream. `id`:
    /// a deterministic command id (a line the console may send twice),
    /// else a fresh one.
    Command {
        node: String,
        chat: String,
        body: CommandBody,
        id: Option<String>,
    },
    /// Tell a waiting visitor their place (ephemeral, not queued).
    QueueStatus {
        node: String,
        chat: String,
        position: u32,
        agents_online: u32,
    },
    /// The agent is typing (ephemeral, not queued).
    Typing {
        node: String,
        chat: String,
    },
    Push {
        agent: String,
        frame: ConsoleOut,
    },
    /// Push the chat with its transcript (the driver reads it).
    PushAssigned {
        agent: String,
        chat: String,
    },
    /// The answer to a console frame (unless an earlier step failed).
    Reply(Result<(), String>),
}

/// The resolution of an escalation refused because its node's share of the
/// queue was full.
pub const QUEUE_FULL: &str = "queue full for this branch";

#[derive(Debug, Clone)]
pub struct Desk {
    router: Router,
    /// The node of each live chat (waiting or held); dropped when it closes.
    nodes: HashMap<String, String>,
    names: HashMap<String, String>,
    /// The place last told to each waiting visitor, and how many agents
    /// were online then (told again only when it changes).
    told: HashMap<String, (u32, u32)>,
    /// Agent lines sent without a console id, numbered for their keys.
    lines: u64,
    /// Waiting chats one node may have in the queue
    /// (`console.max_waiting_per_node`).
    max_waiting_per_node: usize,
}

impl Desk {
    pub fn new(grace_ms: i64) -> Desk {
        Desk {
            router: Router::new(grace_ms),
            nodes: HashMap::new(),
            names: HashMap::new(),
            told: HashMap::new(),
            lines: 0,
            max_waiting_per_node: usize::MAX,
        }
    }

    /// Live chats the desk knows (for tests and the dashboard).
    pub fn live_chats(&self) -> usize {
        self.nodes.len()
    }

    /// The agent holding `chat`.
    pub fn holder(&self, chat: &str) -> Option<&str> {
        self.router.chat(chat).and_then(|c| c.agent.as_deref())
    }

    /// Live numbers for the supervisor dashboard.
    pub fn snapshot(&self, now: i64) -> Live {
        let queue = self.router.queue();
        Live {
            agents: self
                .router
                .agents()
                .map(|(id, a)| AgentLoad {
                    id: id.clone(),
                    name: self.names.get(id).cloned().unwrap_or_default(),
                    presence: format!("{:?}", a.presence).to_lowercase(),
                    connected: Router::connected(a),
                    chats: a.chats.len(),
                    capacity: a.capacity,
                })
                .collect(),
            waiting: queue.iter().filter(|(_, c)| c.present).count(),
            waiting_away: queue.iter().filter(|(_, c)| !c.present).count(),
            longest_wait_ms: queue
                .iter()
                .find(|(_, c)| c.present)
                .map(|(_, c)| now - c.waiting_since)
                .unwrap_or(0),
        }
    }

    /// Tell waiting visitors whose place (or the number of agents online)
    /// changed where they stand.
    fn queue_status(&mut self, out: &mut Vec<Do>) {
        let online = self
            .router
            .agents()
            .filter(|(_, a)| a.presence == Presence::Online && Router::connected(a))
            .count() as u32;
        let mut position = 0;
        let mut waiting = BTreeSet::new();
        for (chat, c) in self.router.queue() {
            if !c.present {
                continue;
            }
            position += 1;
            waiting.insert(chat.clone());
            if self.told.get(chat) == Some(&(position, online)) {
                continue;
            }
            let Some(node) = self.nodes.get(chat) else {
                continue;
            };
            self.told.insert(chat.clone(), (position, online));
            out.push(Do::QueueStatus {
                node: node.clone(),
                chat: chat.clone(),
                position,
                agents_online: online,
            });
        }
        self.told.retain(|chat, _| waiting.contains(chat));
    }

    /// Close a held chat everywhere: stored with `resolution`, the visitor's
    /// node told, the agent's console told (`reason` says why, when it was
    /// not the agent's own doing).
    fn close_both_sides(
        &self,
        chat: &str,
        agent: &str,
        resolution: String,
        reason: Option<String>,
        now: i64,
        out: &mut Vec<Do>,
    ) {
        out.push(Do::Store(ChatWrite::Close {
            chat: chat.to_owned(),
            resolution,
            at: now,
        }));
        if let Some(node) = self.nodes.get(chat).cloned() {
            out.push(Do::Command {
                node,
                chat: chat.to_owned(),
                body: CommandBody::AgentClosed(AgentClosed {
                    conversation: chat.to_owned(),
                }),
                id: None,
            });
        }
        out.push(Do::Push {
            agent: agent.to_owned(),
            frame: ConsoleOut::Closed {
                chat: chat.to_owned(),
                reason,
            },
        });
    }

    /// Forget a chat that ended (the router's close and the desk's maps).
    fn forget(&mut self, chat: &str, now: i64, out: &mut Vec<Do>) {
        let actions = self.router.step(routing::Input::Closed {
            chat: chat.to_owned(),
        });
        self.nodes.remove(chat);
        self.told.remove(chat);
        self.apply(actions, now, out);
    }

    /// Bound each node's share of the waiting queue. Policy: an escalation
    /// over the bound is stored and closed at once ("queue full"), never
    /// queued, so one branch (or a script at its kiosk) cannot fill the
    /// desk's queue; its visitor keeps the node's offer to leave a message.
    pub fn with_max_waiting_per_node(mut self, n: usize) -> Desk {
        self.max_waiting_per_node = n.max(1);
        self
    }

    /// Take `input` at controller time `now` (ms); what to do, in order.
    pub fn step(&mut self, input: In, now: i64) -> Vec<Do> {
        let mut out = Vec::new();
        match input {
            In::Escalated {
                chat,
                node,
                lang,
                at,
            } => {
                let known = self.router.chat(&chat).is_some();
                let waiting_here = self
                    .router
                    .queue()
                    .iter()
                    .filter(|(c, _)| self.nodes.get(c.as_str()) == Some(&node))
                    .count();
                if !known && waiting_here >= self.max_waiting_per_node {
                    out.push(Do::Store(ChatWrite::Close {
                        chat,
                        resolution: QUEUE_FULL.into(),
                        at: now,
                    }));
                    return out;
                }
                self.nodes.insert(chat.clone(), node);
                let actions = self.router.step(routing::Input::Escalated {
                    chat,
                    lang,
                    at,
                    bound_to: None,
                });
                self.apply(actions, now, &mut out);
                self.queue_status(&mut out);
            }
            In::VisitorLine { chat, line } => {
                if let Some(agent) = self.holder(&chat) {
                    out.push(Do::Push {
                        agent: agent.to_owned(),
                        frame: ConsoleOut::Line { chat, line },
                    });
                }
            }
            In::VisitorEnded { chat } => {
                // A waiting chat was closed in the store with the event.
                if let Some(agent) = self.holder(&chat).map(str::to_owned) {
                    out.push(Do::Store(ChatWrite::Close {
                        chat: chat.clone(),
                        resolution: "visitor ended the chat".into(),
                        at: now,
                    }));
                    out.push(Do::Push {
                        agent,
                        frame: ConsoleOut::Closed {
                            chat: chat.clone(),
                            reason: Some("The visitor ended the chat.".into()),
                        },
                    });
                }
                if self.router.chat(&chat).is_some() {
                    self.forget(&chat, now, &mut out);
                }
            }
            In::Withdrawn { chat, reason } => {
                if let Some(agent) = self.holder(&chat).map(str::to_owned) {
                    // Assigned while the node withdrew it: the agent's
                    // join crossed the withdrawal. Close on both sides.
                    self.close_both_sides(
                        &chat,
                        &agent,
                        reason.clone(),
                        Some(reason),
                        now,
                        &mut out,
                    );
                }
                if self.router.chat(&chat).is_some() {
                    self.forget(&chat, now, &mut out);
                }
            }
            In::VisitorPresence { chat, present } => {
                if let Some(agent) = self.holder(&chat) {
                    out.push(Do::Push {
                        agent: agent.to_owned(),
                        frame: ConsoleOut::Visitor {
                            chat: chat.clone(),
                            present,
                        },
                    });
                }
                let actions = self
                    .router
                    .step(routing::Input::VisitorPresence { chat, present });
                self.apply(actions, now, &mut out);
                self.queue_status(&mut out);
            }
            In::Restore { chats } => {
                for c in chats {
                    // Known already: the desk's own state is newer.
                    if self.nodes.contains_key(&c.id) {
                        continue;
                    }
                    self.nodes.insert(c.id.clone(), c.node_id);
                    let actions = match c.agent {
                        Some(agent) => {
                            self.names
                                .insert(agent.id.clone(), agent.display_name.clone());
                            if self.router.agent(&agent.id).is_none() {
                                self.router.step(routing::Input::AgentUpsert {
                                    agent: agent.id.clone(),
                                    capacity: agent.capacity as usize,
                                    languages: agent.languages.iter().cloned().collect(),
                                });
                            }
                            self.router.step(routing::Input::Held {
                                chat: c.id.clone(),
                                lang: c.lang,
                                since: c.queued_at,
                                agent: agent.id,
                                at: now,
                            })
                        }
                        None => self.router.step(routing::Input::Escalated {
                            chat: c.id.clone(),
                            lang: c.lang,
                            at: c.queued_at,
                            bound_to: None,
                        }),
                    };
                    self.apply(actions, now, &mut out);
                    if !c.visitor_present {
                        let actions = self.router.step(routing::Input::VisitorPresence {
                            chat: c.id,
                            present: false,
                        });
                        self.apply(actions, now, &mut out);
                    }
                }
            }
            In::VisitorTyping { chat, node } => {
                // Only the chat's own node speaks for its visitor.
                let own = self.nodes.get(&chat) == Some(&node);
                if let Some(agent) = self.holder(&chat).filter(|_| own) {
                    out.push(Do::Push {
                        agent: agent.to_owned(),
                        frame: ConsoleOut::Typing { chat },
                    });
                }
            }
            In::NodeStatus { node, online } => {
                let agents: BTreeSet<&str> = self
                    .nodes
                    .iter()
                    .filter(|(_, n)| **n == node)
                    .filter_map(|(chat, _)| self.holder(chat))
                    .collect();
                for agent in agents {
                    out.push(Do::Push {
                        agent: agent.to_owned(),
                        frame: ConsoleOut::NodeStatus {
                            node: node.clone(),
                            online,
                        },
                    });
                }
            }
            In::Connected { agent } => {
                self.names
                    .insert(agent.id.clone(), agent.display_name.clone());
                let mut actions = self.router.step(routing::Input::AgentUpsert {
                    agent: agent.id.clone(),
                    capacity: agent.capacity as usize,
                    languages: agent.languages.iter().cloned().collect(),
                });
                actions.extend(self.router.step(routing::Input::Reconnected {
                    agent: agent.id.clone(),
                }));
                // The chats this agent holds come back to the new console.
                let held: Vec<String> = self
                    .router
                    .agent(&agent.id)
                    .map(|a| a.chats.iter().cloned().collect())
                    .unwrap_or_default();
                for chat in held {
                    out.push(Do::PushAssigned {
                        agent: agent.id.clone(),
                        chat,
                    });
                }
                self.apply(actions, now, &mut out);
            }
            In::Disconnected { agent } => {
                let actions = self
                    .router
                    .step(routing::Input::Disconnected { agent, at: now });
                self.apply(actions, now, &mut out);
            }
            In::Tick => {
                let actions = self.router.step(routing::Input::Tick { now });
                self.apply(actions, now, &mut out);
                self.queue_status(&mut out);
            }
            In::Console { agent, frame } => {
                let result = self.console(&agent, frame, now, &mut out);
                out.push(Do::Reply(result));
            }
        }
        out
    }

    fn console(
        &mut self,
        agent: &AgentRow,
        frame: ConsoleIn,
        now: i64,
        out: &mut Vec<Do>,
    ) -> Result<(), String> {
        let mine = |desk: &Desk, chat: &str| desk.holder(chat) == Some(agent.id.as_str());
        match frame {
            ConsoleIn::Presence { state } => {
                let presence = match state.as_str() {
                    "online" => Presence::Online,
                    "away" => Presence::Away,
                    "offline" => Presence::Offline,
                    other => return Err(format!("unknown presence {other:?}")),
                };
                let actions = self.router.step(routing::Input::SetPresence {
                    agent: agent.id.clone(),
                    presence,
                });
                self.apply(actions, now, out);
            }
            ConsoleIn::Message {
                chat,
                text,
                client_id,
            } => {
                let text = text.trim().to_owned();
                if text.is_empty() || text.chars().count() > MAX_LINE {
                    return Err(format!("a message must be 1 to {MAX_LINE} characters"));
                }
                if let Some(id) = &client_id {
                    let ok = (1..=64).contains(&id.len())
                        && id
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b));
                    if !ok {
                        return Err("client_id must be 1 to 64 of A-Z a-z 0-9 _ -".into());
                    }
                }
                if !mine(self, &chat) {
                    return Err("that chat is not assigned to you".into());
                }
                let node = self.nodes.get(&chat).cloned().ok_or("unknown chat")?;
                // A line the console sends again (it had no answer before a
                // reconnect) has the same keys: stored and sent once.
                let (key, id) = match &client_id {
                    Some(c) => {
                        let digest = crate::store::sha256_hex(&format!("{chat}\n{c}"));
                        (
                            format!("console:{c}"),
                            Some(format!("line-{}", &digest[..32])),
                        )
                    }
                    None => {
                        self.lines += 1;
                        (format!("agent:{}:{now}:{}", agent.id, self.lines), None)
                    }
                };
                out.push(Do::Store(ChatWrite::AgentLine {
                    chat: chat.clone(),
                    agent: agent.id.clone(),
                    text: text.clone(),
                    at: now,
                    key,
                }));
                out.push(Do::Command {
                    node,
                    chat: chat.clone(),
                    body: CommandBody::AgentMessage(AgentMessage {
                        conversation: chat,
                        agent_name: agent.display_name.clone(),
                        text,
                    }),
                    id,
                });
            }
            ConsoleIn::Typing { chat } => {
                if mine(self, &chat) {
                    if let Some(node) = self.nodes.get(&chat) {
                        out.push(Do::Typing {
                            node: node.clone(),
                            chat,
                        });
                    }
                }
            }
            ConsoleIn::Close { chat, resolution } => {
                if !mine(self, &chat) {
                    return Err("that chat is not assigned to you".into());
                }
                if !self.nodes.contains_key(&chat) {
                    return Err("unknown chat".into());
                }
                let resolution = resolution.chars().take(MAX_LINE).collect();
                self.close_both_sides(&chat, &agent.id, resolution, None, now, out);
                self.forget(&chat, now, out);
            }
            ConsoleIn::Transfer { chat, to } => {
                if !mine(self, &chat) {
                    return Err("that chat is not assigned to you".into());
                }
                let to_someone = to.is_some();
                let actions = self.router.step(routing::Input::Transfer {
                    chat: chat.clone(),
                    to,
                });
                if let Some(routing::Action::Refused { reason }) = actions.first() {
                    return Err(reason.clone());
                }
                if to_someone {
                    // The router hands it straight on; tell the sender it left them.
                    out.push(Do::Push {
                        agent: agent.id.clone(),
                        frame: ConsoleOut::Requeued { chat },
                    });
                }
                self.apply(actions, now, out);
            }
        }
        Ok(())
    }

    /// What the router's decisions mean.
    fn apply(&self, actions: Vec<routing::Action>, now: i64, out: &mut Vec<Do>) {
        for action in actions {
            match action {
                routing::Action::Assign { chat, agent } => {
                    let Some(node) = self.nodes.get(&chat).cloned() else {
                        tracing::error!(%chat, "an assigned chat has no node");
                        continue;
                    };
                    let name = self.names.get(&agent).cloned().unwrap_or_default();
                    out.push(Do::Store(ChatWrite::Assign {
                        chat: chat.clone(),
                        agent: agent.clone(),
                        at: now,
                    }));
                    out.push(Do::Command {
                        node,
                        chat: chat.clone(),
                        body: CommandBody::AgentJoined(AgentJoined {
                            conversation: chat.clone(),
                            agent_name: name,
                        }),
                        id: None,
                    });
                    out.push(Do::PushAssigned { agent, chat });
                }
                routing::Action::Requeued { chat, from } => {
                    out.push(Do::Store(ChatWrite::Requeue { chat: chat.clone() }));
                    out.push(Do::Push {
                        agent: from,
                        frame: ConsoleOut::Requeued { chat: chat.clone() },
                    });
                    if let Some(node) = self.nodes.get(&chat).cloned() {
                        out.push(Do::Command {
                            node,
                            chat: chat.clone(),
                            body: CommandBody::AgentLeft(AgentLeft { conversation: chat }),
                            id: None,
                        });
                    }
                }
                routing::Action::Refused { reason } => {
                    tracing::debug!(%reason, "routing refused an input")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
