//! Chat routing for human agents: an I/O-free state machine.
//!
//! Inputs: agents' presence and capacity, escalated chats (with a language and,
//! for a returning visitor, the agent who had the conversation), whether each
//! waiting visitor is still there, closes, transfers, and time (for the
//! presence grace period). Output: the assignments to make. Policy, in order:
//! 0. only a chat whose visitor is still there is handed out (a visitor who
//!    closed the page is parked until they return or the node withdraws the
//!    chat), and only to an agent whose console is connected (an agent in the
//!    reconnect grace keeps their chats but gets no new ones);
//! 1. oldest waiting chat first;
//! 2. a returning visitor goes back to the same agent when that agent is online
//!    with free capacity;
//! 3. otherwise an online agent with free capacity who speaks the chat's
//!    language, else any online agent with free capacity;
//! 4. among equals, round robin (the agent assigned least recently).
//!
//! Invariants (property-tested): a chat is held by at most one agent; no agent
//! holds more than its capacity; after every step, no present visitor's chat
//! waits while a connected online agent has free capacity.

use std::collections::{BTreeMap, BTreeSet};

pub type AgentId = String;

/// Closed conversations remembered for session binding.
const MAX_BINDINGS: usize = 100_000;
pub type ChatId = String;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    Online,
    Away,
    Offline,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Agent {
    pub presence: Presence,
    pub capacity: usize,
    pub languages: BTreeSet<String>,
    pub chats: BTreeSet<ChatId>,
    /// Monotonic stamp of the last assignment (round robin).
    last_assigned: u64,
    /// When the agent's connection dropped, if it did; offline after the grace period.
    disconnected_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Chat {
    pub lang: String,
    /// Unix ms when it started waiting (kept when it returns to the queue).
    pub waiting_since: i64,
    pub agent: Option<AgentId>,
    /// Session binding: the agent who last held this conversation.
    pub bound_to: Option<AgentId>,
    /// The visitor's page is open (a waiting chat is only handed out then).
    pub present: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// An agent exists (or changed) with this capacity and these languages.
    AgentUpsert {
        agent: AgentId,
        capacity: usize,
        languages: BTreeSet<String>,
    },
    /// The agent set their presence (or logged in: Online).
    SetPresence { agent: AgentId, presence: Presence },
    /// The agent's console connection dropped at `at`.
    Disconnected { agent: AgentId, at: i64 },
    /// The agent's console reconnected.
    Reconnected { agent: AgentId },
    /// A visitor needs a person. `bound_to`: the agent who had this conversation before.
    Escalated {
        chat: ChatId,
        lang: String,
        at: i64,
        bound_to: Option<AgentId>,
    },
    /// A chat held by `agent` before a restart (rebuilding from the store).
    /// The agent counts as disconnected from `at`: their console has the
    /// reconnect grace to come back before the chat returns to the queue.
    /// Refused if the agent is unknown or full (the chat then waits).
    Held {
        chat: ChatId,
        lang: String,
        since: i64,
        agent: AgentId,
        at: i64,
    },
    /// The visitor's page closed (`false`) or opened again (`true`).
    VisitorPresence { chat: ChatId, present: bool },
    /// The chat ended (agent closed it, or the visitor left).
    Closed { chat: ChatId },
    /// Hand a chat to `to` (also while its visitor has stepped away: the colleague sees them
    /// as away), or back to the queue with `None` (served again once the visitor is there).
    Transfer { chat: ChatId, to: Option<AgentId> },
    /// Time passes (presence grace periods).
    Tick { now: i64 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Assign {
        chat: ChatId,
        agent: AgentId,
    },
    /// The chat went back to the queue (agent offline, transfer to queue).
    Requeued {
        chat: ChatId,
        from: AgentId,
    },
    /// An input was refused (unknown chat or agent, target full, …).
    Refused {
        reason: String,
    },
}

#[derive(Debug, Clone)]
pub struct Router {
    agents: BTreeMap<AgentId, Agent>,
    chats: BTreeMap<ChatId, Chat>,
    /// Who last held each closed conversation (session binding), bounded.
    bindings: BTreeMap<ChatId, AgentId>,
    stamp: u64,
    grace_ms: i64,
}

impl Router {
    /// `grace_ms`: how long a dropped connection may stay before the agent
    /// counts as offline (a flaky laptop does not bounce chats).
    pub fn new(grace_ms: i64) -> Router {
        Router {
            agents: BTreeMap::new(),
            chats: BTreeMap::new(),
            bindings: BTreeMap::new(),
            stamp: 0,
            grace_ms,
        }
    }

    /// Every agent the router knows, by id.
    pub fn agents(&self) -> impl Iterator<Item = (&AgentId, &Agent)> {
        self.agents.iter()
    }

    pub fn agent(&self, id: &str) -> Option<&Agent> {
        self.agents.get(id)
    }

    pub fn chat(&self, id: &str) -> Option<&Chat> {
        self.chats.get(id)
    }

    /// Whether an agent's console is connected (not in the reconnect grace).
    pub fn connected(a: &Agent) -> bool {
        a.disconnected_at.is_none()
    }

    /// Waiting chats (present or not), oldest first.
    pub fn queue(&self) -> Vec<(&ChatId, &Chat)> {
        let mut q: Vec<_> = self
            .chats
            .iter()
            .filter(|(_, c)| c.agent.is_none())
            .collect();
        q.sort_by(|a, b| a.1.waiting_since.cmp(&b.1.waiting_since).then(a.0.cmp(b.0)));
        q
    }

    /// Can take a chat now: online, connected, below capacity.
    pub fn has_room(a: &Agent) -> bool {
        a.presence == Presence::Online && a.disconnected_at.is_none() && a.chats.len() < a.capacity
    }

    pub fn step(&mut self, input: Input) -> Vec<Action> {
        let mut out = Vec::new();
        match input {
            Input::AgentUpsert {
                agent,
                capacity,
                languages,
            } => {
                let a = self.agents.entry(agent).or_insert_with(|| Agent {
                    presence: Presence::Offline,
                    capacity,
                    languages: BTreeSet::new(),
                    chats: BTreeSet::new(),
                    last_assigned: 0,
                    disconnected_at: None,
                });
                a.capacity = capacity;
                a.languages = languages;
            }
            Input::SetPresence { agent, presence } => match self.agents.get_mut(&agent) {
                Some(a) => {
                    a.presence = presence;
                    a.disconnected_at = None;
                    if presence == Presence::Offline {
                        self.release_all(&agent, &mut out);
                    }
                }
                None => out.push(Action::Refused {
                    reason: format!("unknown agent {agent}"),
                }),
            },
            Input::Disconnected { agent, at } => {
                if let Some(a) = self.agents.get_mut(&agent) {
                    a.disconnected_at.get_or_insert(at);
                }
            }
            Input::Reconnected { agent } => {
                if let Some(a) = self.agents.get_mut(&agent) {
                    a.disconnected_at = None;
                }
            }
            Input::Escalated {
                chat,
                lang,
                at,
                bound_to,
            } => {
                if self.chats.get(&chat).is_some_and(|c| c.agent.is_some()) {
                    // Already with an agent: nothing to route.
                } else {
                    let bound = bound_to
                        .or_else(|| self.chats.get(&chat).and_then(|c| c.bound_to.clone()))
                        .or_else(|| self.bindings.get(&chat).cloned());
                    let since = self
                        .chats
                        .get(&chat)
                        .map_or(at, |c| c.waiting_since.min(at));
                    self.chats.insert(
                        chat,
                        Chat {
                            lang,
                            waiting_since: since,
                            agent: None,
                            bound_to: bound,
                            present: true,
                        },
                    );
                }
            }
            Input::Held {
                chat,
                lang,
                since,
                agent,
                at,
            } => {
                let fits = self
                    .agents
                    .get(&agent)
                    .is_some_and(|a| a.chats.len() < a.capacity);
                let taken = self.chats.get(&chat).is_some_and(|c| c.agent.is_some());
                if fits && !taken {
                    let a = self.agents.get_mut(&agent).expect("checked above");
                    a.chats.insert(chat.clone());
                    a.disconnected_at.get_or_insert(at);
                    self.chats.insert(
                        chat,
                        Chat {
                            lang,
                            waiting_since: since,
                            agent: Some(agent.clone()),
                            bound_to: Some(agent),
                            present: true,
                        },
                    );
                } else {
                    out.push(Action::Refused {
                        reason: format!("agent {agent} cannot hold chat {chat} again"),
                    });
                    if !taken {
                        self.chats.insert(
                            chat,
                            Chat {
                                lang,
                                waiting_since: since,
                                agent: None,
                                bound_to: None,
                                present: true,
                            },
                        );
                    }
                }
            }
            Input::VisitorPresence { chat, present } => {
                if let Some(c) = self.chats.get_mut(&chat) {
                    c.present = present;
                }
            }
            Input::Closed { chat } => {
                if let Some(c) = self.chats.remove(&chat) {
                    if let Some(a) = c.agent.clone().or(c.bound_to.clone()) {
                        if self.bindings.len() >= MAX_BINDINGS {
                            self.bindings.pop_first();
                        }
                        self.bindings.insert(chat.clone(), a);
                    }
                    if let Some(a) = c.agent.and_then(|a| self.agents.get_mut(&a)) {
                        a.chats.remove(&chat);
                    }
                }
            }
            Input::Transfer { chat, to } => self.transfer(chat, to, &mut out),
            Input::Tick { now } => {
                let expired: Vec<AgentId> = self
                    .agents
                    .iter()
                    .filter(|(_, a)| a.disconnected_at.is_some_and(|t| now - t >= self.grace_ms))
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in expired {
                    if let Some(a) = self.agents.get_mut(&id) {
                        a.presence = Presence::Offline;
                        a.disconnected_at = None;
                    }
                    self.release_all(&id, &mut out);
                }
            }
        }
        self.assign_waiting(&mut out);
        out
    }

    fn release_all(&mut self, agent: &str, out: &mut Vec<Action>) {
        let Some(a) = self.agents.get_mut(agent) else {
            return;
        };
        for chat in std::mem::take(&mut a.chats) {
            if let Some(c) = self.chats.get_mut(&chat) {
                c.agent = None;
                out.push(Action::Requeued {
                    chat,
                    from: agent.to_owned(),
                });
            }
        }
    }

    fn transfer(&mut self, chat: ChatId, to: Option<AgentId>, out: &mut Vec<Action>) {
        let Some(from) = self.chats.get(&chat).and_then(|c| c.agent.clone()) else {
            out.push(Action::Refused {
                reason: format!("chat {chat} is not held by an agent"),
            });
            return;
        };
        if let Some(target) = &to {
            match self.agents.get(target) {
                Some(a) if Self::has_room(a) && *target != from => {}
                Some(_) => {
                    out.push(Action::Refused {
                        reason: format!("agent {target} cannot take the chat now"),
                    });
                    return;
                }
                None => {
                    out.push(Action::Refused {
                        reason: format!("unknown agent {target}"),
                    });
                    return;
                }
            }
        }
        if let Some(a) = self.agents.get_mut(&from) {
            a.chats.remove(&chat);
        }
        let c = self.chats.get_mut(&chat).expect("checked above");
        c.agent = None;
        match to {
            Some(target) => {
                c.bound_to = Some(target.clone());
                self.give(&chat, &target, out);
            }
            None => {
                // Back to the queue; the next pick should not bounce it to the same agent.
                c.bound_to = None;
                out.push(Action::Requeued { chat, from });
            }
        }
    }

    fn give(&mut self, chat: &str, agent: &str, out: &mut Vec<Action>) {
        self.stamp += 1;
        let a = self.agents.get_mut(agent).expect("caller checked");
        a.chats.insert(chat.to_owned());
        a.last_assigned = self.stamp;
        let c = self.chats.get_mut(chat).expect("caller checked");
        c.agent = Some(agent.to_owned());
        c.bound_to = Some(agent.to_owned());
        out.push(Action::Assign {
            chat: chat.to_owned(),
            agent: agent.to_owned(),
        });
    }

    fn pick(&self, chat: &Chat) -> Option<AgentId> {
        if let Some(b) = &chat.bound_to {
            if self.agents.get(b).is_some_and(Self::has_room) {
                return Some(b.clone());
            }
        }
        let free = || self.agents.iter().filter(|(_, a)| Self::has_room(a));
        let by_round_robin = |it: &mut dyn Iterator<Item = (&AgentId, &Agent)>| {
            it.min_by_key(|(id, a)| (a.last_assigned, (*id).clone()))
                .map(|(id, _)| id.clone())
        };
        by_round_robin(&mut free().filter(|(_, a)| a.languages.contains(&chat.lang)))
            .or_else(|| by_round_robin(&mut free()))
    }

    fn assign_waiting(&mut self, out: &mut Vec<Action>) {
        loop {
            let next = self
                .queue()
                .into_iter()
                .filter(|(_, c)| c.present)
                .find_map(|(id, c)| self.pick(c).map(|a| (id.clone(), a)));
            // Oldest first: if the oldest chat has a taker, it is served before
            // younger ones; `find_map` skips only chats nobody can take.
            match next {
                Some((chat, agent)) => self.give(&chat, &agent, out),
                None => break,
            }
        }
    }
}

#[cfg(test)]
mod tests;
