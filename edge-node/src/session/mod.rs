//! The session service: every visitor session, whoever drives it.
//!
//! The chat WebSocket ([`crate::server`]), the cloud link ([`crate::uplink`])
//! and housekeeping all go through [`Sessions`]: it owns the registry of live
//! sessions and the turn pipeline — NLU on the inference pool, the dialog
//! engine, one store transaction, then the frames to send. It returns frames
//! and never touches a socket, so transports stay thin.
//!
//! - [`registry`]: which connection holds which session.

pub mod registry;

use std::sync::Arc;
use std::time::Instant;

use edgedesk_common::chat::{ErrorCode, HistoryItem, Lang, PROTOCOL_VERSION, Sender, ServerFrame};
use edgedesk_common::event::{Event, EventBody, TranscriptLine};
use edgedesk_dialog::{BotReply, Command, Conversation, Engine, Phase, Turn, Understanding};
use edgedesk_nlu::{Model, entities};
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, mpsc, oneshot, watch};

use crate::inference::{InferError, Inference};
use crate::metrics::Metrics;
use crate::models::ModelManager;
use crate::store::{NewMessage, SessionRow, Store, TurnWrite};
pub use registry::{Claim, Registry};

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}

/// What a human agent does to a conversation, delivered to the connection
/// that holds it (or applied to the store when the visitor is away).
#[derive(Debug, Clone, PartialEq)]
pub enum AgentAction {
    Joined {
        agent: String,
    },
    Message {
        agent: String,
        text: String,
    },
    Left,
    Closed,
    Typing,
    /// The branch's link to the cloud dropped / came back (shown to visitors
    /// who are with an agent; nothing is stored).
    LinkDown,
    LinkUp,
}

impl AgentAction {
    /// Ephemeral: shown if someone is there, never stored.
    fn ephemeral(&self) -> bool {
        matches!(
            self,
            AgentAction::Typing | AgentAction::LinkDown | AgentAction::LinkUp
        )
    }
}

/// An agent action for a live connection; `done` reports whether it was stored.
pub struct AgentEvent {
    pub conversation: String,
    pub action: AgentAction,
    pub done: Option<oneshot::Sender<Result<(), String>>>,
}

/// A session held by a connection.
pub struct Active {
    id: String,
    token_hash: String,
    created_at: i64,
    conv: Conversation,
    claim: Claim,
    /// The model a multi-turn flow started on: the flow finishes on it even
    /// if a new model is swapped in meanwhile.
    flow_model: Option<Arc<Model>>,
}

impl Active {
    pub fn claim(&self) -> &Claim {
        &self.claim
    }

    pub fn conversation(&self) -> &Conversation {
        &self.conv
    }

    /// The conversation is still going (an idle timeout applies).
    pub fn is_open(&self) -> bool {
        self.conv.phase != Phase::Ended
    }
}

/// What a `hello` produced: frames to send and, unless it failed, the
/// session now held with the channel its agent actions arrive on.
pub struct Hello {
    pub frames: Vec<ServerFrame>,
    pub session: Option<(Active, mpsc::Receiver<Box<AgentEvent>>)>,
}

/// What the service needs, wired by [`crate::run`].
pub struct Deps {
    pub engine: Engine,
    pub models: Arc<ModelManager>,
    pub inference: Inference,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    /// Woken when a commit adds outbox events (the uplink drains them).
    pub outbox: Arc<Notify>,
    /// Conversations whose visitor is typing to an agent, for the uplink.
    /// Bounded; when full, typing signals are dropped (they are ephemeral).
    pub typing_up: mpsc::Sender<String>,
    /// Whether the cloud link is up (a colleague can be found).
    pub link_up: watch::Receiver<bool>,
    /// Lines replayed when a session resumes.
    pub history_limit: usize,
    /// Turns answered at once (`server.max_turns_in_flight`); past it, `busy`.
    pub max_turns_in_flight: usize,
}

pub struct Sessions {
    d: Deps,
    pub registry: Registry,
    /// Admission of turns: one permit per turn in progress.
    turns: tokio::sync::Semaphore,
}

impl Sessions {
    pub fn new(d: Deps) -> Sessions {
        Sessions {
            turns: tokio::sync::Semaphore::new(d.max_turns_in_flight.max(1)),
            d,
            registry: Registry::default(),
        }
    }

    fn busy(&self) -> Vec<ServerFrame> {
        self.d.metrics.shed.inc();
        vec![self.error(
            ErrorCode::Busy,
            "the assistant is busy right now; please send your message again",
        )]
    }

    pub fn engine(&self) -> &Engine {
        &self.d.engine
    }

    fn error(&self, code: ErrorCode, message: impl Into<String>) -> ServerFrame {
        self.d.metrics.reject(code.as_str());
        ServerFrame::Error {
            code,
            message: message.into(),
        }
    }

    /// Start a session, or resume the one `token` names.
    pub async fn hello(&self, token: Option<String>, lang: Option<Lang>) -> Hello {
        let mut frames = Vec::new();
        if let Some(token) = token {
            match self
                .d
                .store
                .session_by_token_hash(&hash_token(&token))
                .await
            {
                Ok(Some(row)) => match serde_json::from_str::<Conversation>(&row.state) {
                    Ok(conv) => return self.resume(token, row, conv).await,
                    Err(e) => {
                        tracing::error!(error = %e, session = %row.id, "stored session state unreadable; starting anew")
                    }
                },
                Ok(None) => frames.push(self.error(
                    ErrorCode::UnknownSession,
                    "unknown session; a new one was started",
                )),
                Err(e) => {
                    tracing::error!(error = %e, "session lookup failed");
                    frames.push(self.error(
                        ErrorCode::Internal,
                        "could not look up the session; a new one was started",
                    ));
                }
            }
        }
        let lang = lang.unwrap_or_default();
        let token = new_token();
        let id = uuid::Uuid::new_v4().to_string();
        let now = now_ms();
        let (claim, agent_rx) = self.registry.claim(&id);
        let active = Active {
            id,
            token_hash: hash_token(&token),
            created_at: now,
            conv: Conversation::new(uuid::Uuid::new_v4().to_string(), lang, now),
            claim,
            flow_model: None,
        };
        let welcome = self.d.engine.welcome(lang);
        let write = build_write(
            &active,
            vec![bot_message(&welcome, now)],
            Vec::new(),
            Some((lang.as_str().into(), now)),
        );
        match self.d.store.commit(write).await {
            Ok(ids) => {
                self.d.metrics.session("new");
                self.d.metrics.message("out", 1);
                frames.push(ServerFrame::Welcome {
                    v: PROTOCOL_VERSION,
                    session: token,
                    conversation: active.conv.id.clone(),
                    lang,
                    state: active.conv.chat_state(),
                    resumed: false,
                    history: vec![HistoryItem {
                        id: ids[0],
                        from: Sender::Bot,
                        text: welcome.text,
                        quick_replies: welcome.quick_replies,
                        at: now,
                    }],
                });
                Hello {
                    frames,
                    session: Some((active, agent_rx)),
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "storing a new session failed");
                self.registry.release(&active.id, &active.claim);
                frames.push(self.error(
                    ErrorCode::Internal,
                    "could not start a session; please retry",
                ));
                Hello {
                    frames,
                    session: None,
                }
            }
        }
    }

    async fn resume(&self, token: String, row: SessionRow, conv: Conversation) -> Hello {
        let (claim, agent_rx) = self.registry.claim(&row.id);
        let history = match self.d.store.history(&conv.id, self.d.history_limit).await {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(error = %e, "loading history failed");
                Vec::new()
            }
        };
        self.d.metrics.session("resumed");
        let frame = ServerFrame::Welcome {
            v: PROTOCOL_VERSION,
            session: token,
            conversation: conv.id.clone(),
            lang: conv.lang,
            state: conv.chat_state(),
            resumed: true,
            history,
        };
        let active = Active {
            id: row.id,
            token_hash: row.token_hash,
            created_at: row.created_at,
            conv,
            claim,
            flow_model: None,
        };
        Hello {
            frames: vec![frame],
            session: Some((active, agent_rx)),
        }
    }

    /// The connection holding `active` is going away.
    pub fn release(&self, active: &Active) {
        self.registry.release(&active.id, &active.claim);
    }

    /// Put back the stored state after a failed commit (the engine had
    /// already changed the in-memory conversation).
    async fn restore(&self, active: &mut Active) {
        match self.d.store.session_by_token_hash(&active.token_hash).await {
            Ok(Some(row)) => match serde_json::from_str::<Conversation>(&row.state) {
                Ok(conv) => active.conv = conv,
                Err(e) => tracing::error!(error = %e, "stored session state unreadable"),
            },
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, "re-reading a session after a failed commit failed")
            }
        }
    }

    /// One visitor message: understand, decide, store, answer.
    pub async fn turn(
        &self,
        active: &mut Active,
        text: String,
        client_id: Option<String>,
        payload: Option<String>,
    ) -> Vec<ServerFrame> {
        // Shed at the door when saturated (policy: refuse, never queue).
        let Ok(_turn) = self.turns.try_acquire() else {
            return self.busy();
        };
        let started = Instant::now();
        let now = now_ms();
        let command = payload
            .as_deref()
            .and_then(Command::parse)
            .or_else(|| Command::parse(&text));
        let in_flow = matches!(active.conv.phase, Phase::Flow(_));
        let model = match (&active.flow_model, in_flow) {
            (Some(m), true) => m.clone(),
            _ => self.d.models.active.get(),
        };
        let nlu_started = Instant::now();
        let nlu = match self.d.inference.classify(model.clone(), text.clone()).await {
            Ok(p) => Understanding {
                intent: p.label,
                confidence: p.confidence,
                answered: p.answered,
            },
            Err(InferError::Busy) => return self.busy(),
            Err(e) => {
                tracing::error!(error = %e, "classification failed; treating as not understood");
                Understanding {
                    intent: String::new(),
                    confidence: 0.0,
                    answered: false,
                }
            }
        };
        let m = &self.d.metrics;
        m.nlu_latency.observe(nlu_started.elapsed().as_secs_f64());
        if nlu.answered {
            m.intent(&nlu.intent);
        } else {
            m.unanswered.inc();
        }
        let mut start = None;
        if active.conv.phase == Phase::Ended {
            active.conv =
                Conversation::new(uuid::Uuid::new_v4().to_string(), active.conv.lang, now);
            start = Some((active.conv.lang.as_str().to_owned(), now));
        }
        let today = chrono::Local::now().date_naive();
        let turn = Turn {
            text: &text,
            command,
            nlu: nlu.clone(),
            entities: entities::extract(&text, today),
            today,
            now_ms: now,
            agents_available: *self.d.link_up.borrow(),
        };
        let outcome = self.d.engine.handle(&mut active.conv, &turn);
        let escalated = outcome
            .events
            .iter()
            .any(|e| matches!(e, EventBody::Escalation(_)));
        self.d
            .models
            .observe(&model.manifest().version, nlu.answered, escalated);
        active.flow_model = match active.conv.phase {
            Phase::Flow(_) => Some(model),
            _ => None,
        };
        for ev in &outcome.events {
            match ev {
                EventBody::Escalation(_) => {
                    m.escalations.inc();
                }
                EventBody::OfflineMessage(_) => {
                    m.offline_messages.inc();
                }
                EventBody::ConversationSummary(s) => m.ended(&s.reason),
                EventBody::FlowCompleted(_) | EventBody::ChatLine(_) | EventBody::Rating(_) => {}
            }
        }
        let had_events = !outcome.events.is_empty();
        let mut events = outcome.events;
        if escalated {
            // An escalation carries the conversation so far, for the agent.
            let mut transcript: Vec<TranscriptLine> = self
                .d
                .store
                .history(&active.conv.id, 200)
                .await
                .unwrap_or_default()
                .into_iter()
                .map(TranscriptLine::from)
                .collect();
            transcript.push(TranscriptLine {
                id: 0,
                from: Sender::Visitor,
                text: text.clone(),
                at: now,
            });
            if let Some(EventBody::Escalation(x)) = events
                .iter_mut()
                .find(|e| matches!(e, EventBody::Escalation(_)))
            {
                x.transcript = transcript;
            }
        }
        let replies = outcome.replies.len();
        let classified = !nlu.intent.is_empty();
        let mut messages = Vec::with_capacity(1 + replies);
        messages.push(NewMessage {
            sender: Sender::Visitor,
            text,
            quick_replies: Vec::new(),
            intent: nlu.answered.then_some(nlu.intent),
            confidence: classified.then_some(nlu.confidence),
            at: now,
        });
        messages.extend(outcome.replies.iter().map(|r| bot_message(r, now)));
        let write = build_write(active, messages, events, start);
        let ids = match self.d.store.commit(write).await {
            Ok(ids) => ids,
            Err(e) => {
                tracing::error!(error = %e, "storing a turn failed");
                self.restore(active).await;
                return vec![self.error(
                    ErrorCode::Internal,
                    "your message could not be stored; please send it again",
                )];
            }
        };
        if had_events {
            self.d.outbox.notify_one();
        }
        m.message("in", 1);
        m.message("out", replies as u64);
        let mut frames = Vec::with_capacity(1 + replies);
        frames.push(ServerFrame::Ack {
            client_id,
            id: ids[0],
        });
        let state = active.conv.chat_state();
        for (reply, id) in outcome.replies.into_iter().zip(ids.into_iter().skip(1)) {
            frames.push(ServerFrame::Reply {
                id,
                from: reply.from,
                text: reply.text,
                lang: active.conv.lang,
                quick_replies: reply.quick_replies,
                state,
                intent: reply.intent,
            });
        }
        m.turn_latency.observe(started.elapsed().as_secs_f64());
        frames
    }

    /// The visitor switched the page language.
    pub async fn set_lang(&self, active: &mut Active, lang: Lang) {
        active.conv.lang = lang;
        let write = build_write(active, Vec::new(), Vec::new(), None);
        if let Err(e) = self.d.store.commit(write).await {
            tracing::error!(error = %e, "storing language change failed");
        }
    }

    /// The visitor is typing: tell the agent, if one holds the chat.
    pub fn typing(&self, active: &Active) {
        if matches!(active.conv.phase, Phase::WithAgent { .. }) {
            let _ = self.d.typing_up.try_send(active.conv.id.clone());
        }
    }

    /// End the held conversation after inactivity; the notice to show.
    pub async fn end_idle(&self, active: &mut Active) -> Option<ServerFrame> {
        let summary = self.d.engine.end(&mut active.conv, "idle", now_ms())?;
        let write = build_write(active, Vec::new(), vec![summary], None);
        match self.d.store.commit(write).await {
            Ok(_) => {
                self.d.metrics.ended("idle");
                self.d.outbox.notify_one();
                Some(ServerFrame::Notice {
                    code: "conversation_ended".into(),
                    text: "This conversation ended after a period of inactivity.".into(),
                })
            }
            Err(e) => {
                tracing::error!(error = %e, "ending an idle conversation failed");
                self.restore(active).await;
                None
            }
        }
    }

    /// An agent action that reached the connection holding `active` (or no
    /// session): apply, store, and the frames to show.
    pub async fn agent_event(
        &self,
        active: Option<&mut Active>,
        ev: Box<AgentEvent>,
    ) -> Vec<ServerFrame> {
        let AgentEvent {
            conversation,
            action,
            done,
        } = *ev;
        let mut frames = Vec::new();
        let result = match (action, active) {
            (action @ (AgentAction::LinkDown | AgentAction::LinkUp), active) => {
                let with_agent =
                    active.is_some_and(|a| matches!(a.conv.phase, Phase::WithAgent { .. }));
                if with_agent {
                    let (code, text) = if action == AgentAction::LinkDown {
                        (
                            "agent_reconnecting",
                            "Our colleague's connection was interrupted. They are reconnecting; your messages will reach them.",
                        )
                    } else {
                        ("agent_reconnected", "Our colleague is back.")
                    };
                    frames.push(ServerFrame::Notice {
                        code: code.into(),
                        text: text.into(),
                    });
                }
                Ok(())
            }
            (action, Some(a)) if a.conv.id == conversation => {
                if action == AgentAction::Typing {
                    frames.push(ServerFrame::Typing {
                        from: Sender::Agent,
                    });
                    Ok(())
                } else {
                    match apply_action(&self.d.engine, &mut a.conv, &action) {
                        None => Ok(()),
                        Some(reply) => {
                            let write = build_write(
                                a,
                                vec![bot_message(&reply, now_ms())],
                                Vec::new(),
                                None,
                            );
                            match self.d.store.commit(write).await {
                                Ok(ids) => {
                                    frames.push(ServerFrame::Reply {
                                        id: ids[0],
                                        from: reply.from,
                                        text: reply.text,
                                        lang: a.conv.lang,
                                        quick_replies: reply.quick_replies,
                                        state: a.conv.chat_state(),
                                        intent: None,
                                    });
                                    Ok(())
                                }
                                Err(e) => {
                                    self.restore(a).await;
                                    Err(e.to_string())
                                }
                            }
                        }
                    }
                }
            }
            // The visitor has moved on to another conversation: store only.
            (action, _) => Box::pin(self.deliver_stored(&conversation, action)).await,
        };
        if let Some(done) = done {
            let _ = done.send(result);
        }
        frames
    }

    /// The stored session whose current conversation is `conversation`.
    async fn stored_session(&self, conversation: &str) -> Result<SessionRow, String> {
        self.d
            .store
            .session_by_conversation(conversation)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("unknown conversation {conversation}"))
    }

    /// Deliver an agent action to `conversation`: through the connection
    /// holding it when the visitor is here (so its in-memory state stays
    /// right), else straight to the store. `Ok` once it is stored.
    pub async fn deliver(&self, conversation: &str, action: AgentAction) -> Result<(), String> {
        let row = self.stored_session(conversation).await?;
        if let Some(tx) = self.registry.sender(&row.id) {
            let (done, wait) = oneshot::channel();
            let ev = Box::new(AgentEvent {
                conversation: conversation.to_owned(),
                action: action.clone(),
                done: Some(done),
            });
            if tx.send(ev).await.is_ok() {
                if let Ok(r) = wait.await {
                    return r;
                }
            }
            // The connection went away meanwhile: fall through to the store.
        }
        self.deliver_stored(conversation, action).await
    }

    /// Apply an agent action straight to the stored conversation.
    async fn deliver_stored(&self, conversation: &str, action: AgentAction) -> Result<(), String> {
        if action.ephemeral() {
            return Ok(());
        }
        let row = self.stored_session(conversation).await?;
        let mut conv: Conversation = serde_json::from_str(&row.state).map_err(|e| e.to_string())?;
        if conv.id != conversation {
            return Err(format!("conversation {conversation} is over"));
        }
        let Some(reply) = apply_action(&self.d.engine, &mut conv, &action) else {
            return Ok(());
        };
        let stored = Stored::from_row(&row, conv);
        let write = stored.write(vec![bot_message(&reply, now_ms())], Vec::new(), None);
        self.d
            .store
            .commit(write)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Tell every live connection that the cloud link went down or up.
    pub fn broadcast_link(&self, up: bool) {
        self.registry.broadcast(|| AgentEvent {
            conversation: String::new(),
            action: if up {
                AgentAction::LinkUp
            } else {
                AgentAction::LinkDown
            },
            done: None,
        });
    }

    /// End conversations idle since before `cutoff` that no connection
    /// holds (held ones are ended by their connection). Returns how many.
    pub async fn end_idle_stored(
        &self,
        cutoff: i64,
        now: i64,
    ) -> Result<usize, crate::store::StoreError> {
        let mut closed = 0;
        for row in self.d.store.idle_sessions(cutoff, 1000).await? {
            if self.registry.is_live(&row.id) {
                continue;
            }
            let Ok(mut conv) = serde_json::from_str::<Conversation>(&row.state) else {
                tracing::warn!(session = %row.id, "unreadable session state; skipped");
                continue;
            };
            let Some(summary) = self.d.engine.end(&mut conv, "idle", now) else {
                continue;
            };
            let mut write = Stored::from_row(&row, conv).write(Vec::new(), vec![summary], None);
            // Keep the session's last_seen: ending it is not visitor activity.
            write.session.last_seen = row.last_seen;
            self.d.store.commit(write).await?;
            self.d.metrics.ended("idle");
            self.d.outbox.notify_one();
            closed += 1;
        }
        Ok(closed)
    }
}

/// Apply an agent action to a conversation; the line to store and show, if any.
fn apply_action(
    engine: &Engine,
    conv: &mut Conversation,
    action: &AgentAction,
) -> Option<BotReply> {
    Some(match action {
        AgentAction::Joined { agent } => engine.agent_joined(conv, agent),
        AgentAction::Message { agent, text } => engine.agent_message(conv, agent, text),
        AgentAction::Left => engine.agent_left(conv),
        AgentAction::Closed => engine.agent_closed(conv),
        AgentAction::Typing | AgentAction::LinkDown | AgentAction::LinkUp => return None,
    })
}

/// A session read from the store (nobody holds it).
struct Stored<'a> {
    row: &'a SessionRow,
    conv: Conversation,
}

impl<'a> Stored<'a> {
    fn from_row(row: &'a SessionRow, conv: Conversation) -> Stored<'a> {
        Stored { row, conv }
    }

    fn write(
        &self,
        messages: Vec<NewMessage>,
        events: Vec<EventBody>,
        start: Option<(String, i64)>,
    ) -> TurnWrite {
        write_for(
            &self.row.id,
            &self.row.token_hash,
            self.row.created_at,
            &self.conv,
            messages,
            events,
            start,
        )
    }
}

fn build_write(
    a: &Active,
    messages: Vec<NewMessage>,
    events: Vec<EventBody>,
    start: Option<(String, i64)>,
) -> TurnWrite {
    write_for(
        &a.id,
        &a.token_hash,
        a.created_at,
        &a.conv,
        messages,
        events,
        start,
    )
}

/// One atomic write: the session's new state, its messages, and the events
/// (given ids and timestamps here) that describe the change.
fn write_for(
    session_id: &str,
    token_hash: &str,
    created_at: i64,
    conv: &Conversation,
    messages: Vec<NewMessage>,
    events: Vec<EventBody>,
    start: Option<(String, i64)>,
) -> TurnWrite {
    let now = now_ms();
    let escalated = events.iter().any(|e| matches!(e, EventBody::Escalation(_)));
    let conversation_end = events.iter().find_map(|e| match e {
        EventBody::ConversationSummary(s) => Some((s.ended_at, s.reason.clone())),
        _ => None,
    });
    TurnWrite {
        session: SessionRow {
            id: session_id.to_owned(),
            token_hash: token_hash.to_owned(),
            created_at,
            last_seen: now,
            conversation_id: conv.id.clone(),
            state: serde_json::to_string(conv).unwrap_or_else(|_| "{}".into()),
        },
        conversation_start: start,
        conversation_end,
        escalated,
        messages,
        events: events
            .into_iter()
            .map(|body| Event {
                id: uuid::Uuid::new_v4().to_string(),
                at: now,
                body,
            })
            .collect(),
    }
}

fn bot_message(reply: &BotReply, at: i64) -> NewMessage {
    NewMessage {
        sender: reply.from,
        text: reply.text.clone(),
        quick_replies: reply.quick_replies.clone(),
        intent: reply.intent.clone(),
        confidence: None,
        at,
    }
}
