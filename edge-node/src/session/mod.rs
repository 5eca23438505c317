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
pub mod samples;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use edgedesk_common::chat::{ErrorCode, HistoryItem, Lang, PROTOCOL_VERSION, Sender, ServerFrame};
use edgedesk_common::event::{Event, EventBody, Guess, Sample, TranscriptLine, VisitorPresence};
use edgedesk_dialog::kb::ModelAnswers;
use edgedesk_dialog::{BotReply, Command, Conversation, Engine, Phase, Turn, Understanding};
use edgedesk_nlu::{Model, entities};
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, mpsc, oneshot, watch};

use crate::inference::{Classified, InferError, Inference};
use crate::metrics::Metrics;
use crate::models::ModelManager;
use crate::store::{NewMessage, SessionRow, Store, TurnWrite};
pub use registry::{Claim, Registry};

pub use edgedesk_support::now_ms;

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
    /// The waiting visitor's place in the queue (shown, not stored).
    Queue {
        position: u32,
        agents_online: u32,
    },
}

impl AgentAction {
    /// Ephemeral: shown if someone is there, never stored.
    fn ephemeral(&self) -> bool {
        matches!(
            self,
            AgentAction::Typing
                | AgentAction::LinkDown
                | AgentAction::LinkUp
                | AgentAction::Queue { .. }
        )
    }
}

/// An agent action for a live connection; `done` reports whether it was stored.
pub struct AgentEvent {
    pub conversation: String,
    pub action: AgentAction,
    pub done: Option<oneshot::Sender<Result<(), String>>>,
    /// The trace context of the span that delivers it (the agent's line).
    pub trace: Option<String>,
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
    /// The greeting's line, while the visitor has not written yet (a
    /// language switch rewrites it).
    welcome_id: Option<i64>,
    /// The text of the last learning sample this session sent: a line asked
    /// to be rephrased and then escalated is sent once.
    sampled: Option<String>,
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

    /// When a waiting visitor should be offered to leave a message (ms).
    pub fn offer_due(&self, after_ms: i64) -> Option<i64> {
        match (&self.conv.phase, self.conv.escalated_at) {
            (Phase::WaitingForAgent, Some(at)) if !self.conv.queue_offer_made && after_ms > 0 => {
                Some(at + after_ms)
            }
            _ => None,
        }
    }
}

/// A visitor of an escalated conversation whose page went away.
#[derive(Debug, Clone)]
struct Departure {
    at: i64,
    /// "Left" was reported to the agent.
    reported: bool,
}

/// A visitor gone this long is shown as gone to the agent.
const PRESENCE_GRACE_MS: i64 = 10_000;

/// Most bytes of history a `welcome` replays (it must fit a WebSocket
/// write; older lines are left out and `more` says so).
pub const WELCOME_HISTORY_BYTES: usize = 32 * 1024;

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
    /// The kiosk page forgets an idle session after this long (0: never).
    pub idle_reset_secs: u32,
    /// A waiting visitor gone this long leaves the queue (ms).
    pub abandon_grace_ms: i64,
    /// A visitor waiting this long is offered to leave a message (ms; 0: never).
    pub queue_offer_ms: i64,
    /// Learning samples' daily budget; `None`: none are sent (opted out, or
    /// no cloud to send them to).
    pub samples: Option<samples::Budget>,
}

pub struct Sessions {
    d: Deps,
    pub registry: Registry,
    /// Admission of turns: one permit per turn in progress.
    turns: tokio::sync::Semaphore,
    /// Escalated sessions whose visitor left, by session id. Design: a std
    /// mutex held for map operations only, never across an await.
    departures: Mutex<HashMap<String, Departure>>,
    /// The answers the last model used carries (`answers.toml`, for intents
    /// the learning loop taught it), by the model's bundle folder: read
    /// once per model, not per turn.
    model_answers: Mutex<Option<(PathBuf, Option<Arc<ModelAnswers>>)>>,
}

impl Sessions {
    pub fn new(d: Deps) -> Sessions {
        Sessions {
            turns: tokio::sync::Semaphore::new(d.max_turns_in_flight.max(1)),
            d,
            registry: Registry::default(),
            departures: Mutex::default(),
            model_answers: Mutex::default(),
        }
    }

    /// The answers `model`'s bundle carries, if its signed manifest lists
    /// them (hash-checked when the model loaded). A file that does not parse
    /// is logged once and ignored: the bot then offers a person.
    async fn model_answers(&self, model: &Arc<Model>) -> Option<Arc<ModelAnswers>> {
        let dir = model.dir().to_owned();
        {
            let cached = self.model_answers.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((_, a)) = cached.as_ref().filter(|(d, _)| *d == dir) {
                return a.clone();
            }
        }
        let m = Arc::clone(model);
        let answers =
            match tokio::task::spawn_blocking(move || crate::models::load_answers(&m)).await {
                Ok(Ok(a)) => a.map(Arc::new),
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "the model's answers are unusable");
                    None
                }
                Err(e) => {
                    tracing::error!(error = %e, "reading the model's answers failed");
                    None
                }
            };
        *self.model_answers.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((dir, answers.clone()));
        answers
    }

    fn departures(&self) -> std::sync::MutexGuard<'_, HashMap<String, Departure>> {
        self.departures.lock().unwrap_or_else(|p| p.into_inner())
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
            client_id: None,
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
                    // An ended conversation is never shown again (a shared
                    // kiosk: the next visitor must not see it): start anew.
                    Ok(conv) if conv.phase == Phase::Ended => {}
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
        let chosen = lang.is_some();
        let lang = lang.unwrap_or_default();
        let token = new_token();
        let id = uuid::Uuid::new_v4().to_string();
        let now = now_ms();
        let (claim, agent_rx) = self.registry.claim(&id);
        let mut conv = Conversation::new(uuid::Uuid::new_v4().to_string(), lang, now);
        // A page sends a language only when the visitor picked one.
        conv.lang_chosen = chosen;
        let mut active = Active {
            id,
            token_hash: hash_token(&token),
            created_at: now,
            conv,
            claim,
            flow_model: None,
            welcome_id: None,
            sampled: None,
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
                active.welcome_id = Some(ids[0]);
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
                        author: None,
                        text: welcome.text,
                        quick_replies: welcome.quick_replies,
                        at: now,
                    }],
                    more: false,
                    idle_reset_secs: self.d.idle_reset_secs,
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
        let (history, more) = cap_history(history, WELCOME_HISTORY_BYTES);
        self.d.metrics.session("resumed");
        let welcome_id = (conv.visitor_turns == 0)
            .then(|| history.first().map(|h| h.id))
            .flatten();
        let frame = ServerFrame::Welcome {
            v: PROTOCOL_VERSION,
            session: token,
            conversation: conv.id.clone(),
            lang: conv.lang,
            state: conv.chat_state(),
            resumed: true,
            history,
            more,
            idle_reset_secs: self.d.idle_reset_secs,
        };
        let mut active = Active {
            id: row.id,
            token_hash: row.token_hash,
            created_at: row.created_at,
            conv,
            claim,
            flow_model: None,
            welcome_id,
            sampled: None,
        };
        // Back after being reported gone: tell the agent.
        let back = self.departures().remove(&active.id);
        if back.is_some_and(|d| d.reported) {
            self.presence(&mut active, true).await;
        }
        Hello {
            frames: vec![frame],
            session: Some((active, agent_rx)),
        }
    }

    /// Record that the visitor of `active` left or came back.
    async fn presence(&self, active: &mut Active, present: bool) {
        let event = EventBody::VisitorPresence(VisitorPresence {
            conversation: active.conv.id.clone(),
            present,
        });
        let write = build_write(active, Vec::new(), vec![event], None);
        match self.d.store.commit(write).await {
            Ok(_) => self.d.outbox.notify_one(),
            Err(e) => tracing::error!(error = %e, "recording the visitor's presence failed"),
        }
    }

    /// The connection holding `active` is going away. A visitor who leaves
    /// an escalated conversation is watched: shown as gone to the agent
    /// after a short grace, out of the queue after `abandon_grace`.
    pub fn release(&self, active: &Active) {
        let left = self.registry.release(&active.id, &active.claim);
        let escalated = matches!(
            active.conv.phase,
            Phase::WaitingForAgent | Phase::WithAgent { .. }
        );
        if left && escalated {
            self.departures().insert(
                active.id.clone(),
                Departure {
                    at: now_ms(),
                    reported: false,
                },
            );
        }
    }

    /// Escalated sessions nobody holds after a restart count as departed
    /// from now (call once at start).
    pub async fn adopt_departures(&self) {
        match self.d.store.escalated_sessions(10_000).await {
            Ok(rows) => {
                let now = now_ms();
                let mut d = self.departures();
                for row in rows {
                    if !self.registry.is_live(&row.id) {
                        d.entry(row.id).or_insert(Departure {
                            at: now,
                            reported: false,
                        });
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "loading escalated sessions failed"),
        }
    }

    /// Tell agents about visitors who left, and take those who left a
    /// waiting conversation too long ago out of the queue. Returns how many
    /// escalations were withdrawn.
    pub async fn check_departures(&self, now: i64) -> usize {
        let due: Vec<(String, Departure)> = self
            .departures()
            .iter()
            .filter(|(_, d)| {
                (!d.reported && now - d.at >= PRESENCE_GRACE_MS)
                    || now - d.at >= self.d.abandon_grace_ms
            })
            .map(|(id, d)| (id.clone(), d.clone()))
            .collect();
        let mut withdrawn = 0;
        for (id, d) in due {
            if self.registry.is_live(&id) {
                self.departures().remove(&id);
                continue;
            }
            let row = match self.d.store.session(&id).await {
                Ok(Some(row)) => row,
                Ok(None) => {
                    self.departures().remove(&id);
                    continue;
                }
                Err(e) => {
                    tracing::error!(error = %e, "reading a departed session failed");
                    continue;
                }
            };
            let Ok(mut conv) = serde_json::from_str::<Conversation>(&row.state) else {
                self.departures().remove(&id);
                continue;
            };
            let waiting = conv.phase == Phase::WaitingForAgent;
            let with_agent = matches!(conv.phase, Phase::WithAgent { .. });
            let mut events = Vec::new();
            if waiting && now - d.at >= self.d.abandon_grace_ms {
                events.extend(self.d.engine.withdraw(&mut conv, "visitor_left"));
            } else if (waiting || with_agent) && !d.reported {
                events.push(EventBody::VisitorPresence(VisitorPresence {
                    conversation: conv.id.clone(),
                    present: false,
                }));
            }
            if events.is_empty() {
                if !(waiting || with_agent) {
                    self.departures().remove(&id);
                }
                continue;
            }
            let withdrew = events
                .iter()
                .any(|e| matches!(e, EventBody::EscalationWithdrawn(_)));
            let mut write = Stored::from_row(&row, conv).write(Vec::new(), events, None);
            write.session.last_seen = row.last_seen;
            if let Err(e) = self.d.store.commit(write).await {
                tracing::error!(error = %e, "recording a departure failed");
                continue;
            }
            self.d.outbox.notify_one();
            let mut map = self.departures();
            if withdrew {
                map.remove(&id);
                withdrawn += 1;
            } else if let Some(entry) = map.get_mut(&id) {
                entry.reported = true;
            }
        }
        withdrawn
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
        // Only what a visitor asks the bot is a learning sample: answers to
        // a flow's or the contact form's questions (names, addresses) and
        // lines to an agent never are.
        // A button (a rating, "leave a message") is no question to the bot;
        // "a person, please" is, typed or tapped (its sample is the line before).
        let asked = if matches!(command, None | Some(Command::Agent))
            && matches!(active.conv.phase, Phase::Bot | Phase::Ended)
        {
            Asked::Bot
        } else if command == Some(Command::Cancel)
            && matches!(&active.conv.phase, Phase::Flow(f) if f.slots.is_empty() && f.reprompts == 0)
        {
            // Cancelled at the flow's first question: the bot took the line
            // that started it for something it was not.
            Asked::CancelledAtOnce
        } else {
            Asked::Other
        };
        let model = match (&active.flow_model, in_flow) {
            (Some(m), true) => m.clone(),
            _ => self.d.models.active.get(),
        };
        let nlu_started = Instant::now();
        let mut compute = None;
        let (nlu, runners_up) = match self.d.inference.classify(model.clone(), text.clone()).await {
            Ok(Classified {
                prediction: p,
                compute: c,
            }) => {
                compute = Some(c);
                if p.first_stage {
                    self.d.metrics.nlu_first_stage.inc();
                }
                (
                    Understanding {
                        intent: p.label,
                        confidence: p.confidence,
                        answered: p.answered,
                    },
                    p.runners_up,
                )
            }
            Err(InferError::Busy) => return self.busy(),
            Err(e) => {
                tracing::error!(error = %e, "classification failed; treating as not understood");
                let none = Understanding {
                    intent: String::new(),
                    confidence: 0.0,
                    answered: false,
                };
                (none, [None; 2])
            }
        };
        let m = &self.d.metrics;
        // The model's time, and apart from it the wait for a thread: a
        // slow model and an overloaded node look different to an operator.
        let waited = nlu_started.elapsed();
        if let Some(c) = compute {
            m.nlu_latency.observe(c.as_secs_f64());
            m.nlu_wait.observe(waited.saturating_sub(c).as_secs_f64());
        }
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
        let local = chrono::Local::now().naive_local();
        let today = local.date();
        let model_answers = self.model_answers(&model).await;
        let turn = Turn {
            text: &text,
            command,
            nlu: nlu.clone(),
            entities: entities::extract(&text, today),
            today,
            local_time: local.time(),
            now_ms: now,
            agents_available: *self.d.link_up.borrow(),
            model_answers: model_answers.as_deref(),
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
            Phase::Flow(_) => Some(model.clone()),
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
                EventBody::FlowCompleted(_)
                | EventBody::ChatLine(_)
                | EventBody::Rating(_)
                | EventBody::EscalationWithdrawn(_)
                | EventBody::VisitorPresence(_)
                | EventBody::Sample(_) => {}
            }
        }
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
        if let Some(sample) = self
            .sample(active, asked, &model, &nlu, runners_up, &text, &events, now)
            .await
        {
            events.push(sample);
        }
        let had_events = !events.is_empty();
        let replies = outcome.replies.len();
        let classified = !nlu.intent.is_empty();
        let mut messages = Vec::with_capacity(1 + replies);
        messages.push(NewMessage {
            sender: Sender::Visitor,
            author: None,
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
        for (reply, id) in outcome.replies.into_iter().zip(ids.into_iter().skip(1)) {
            frames.push(reply_frame(id, reply, &active.conv));
        }
        m.turn_latency.observe(started.elapsed().as_secs_f64());
        frames
    }

    /// A learning sample for this turn, when it taught something and the
    /// day's budget allows (see [`samples`]).
    #[allow(clippy::too_many_arguments)]
    async fn sample(
        &self,
        active: &mut Active,
        asked: Asked,
        model: &edgedesk_nlu::Model,
        nlu: &Understanding,
        runners_up: [Option<(usize, f32)>; 2],
        text: &str,
        events: &[EventBody],
        now: i64,
    ) -> Option<EventBody> {
        let budget = self.d.samples.as_ref()?;
        if nlu.intent.is_empty() {
            return None;
        }
        let manifest = model.manifest();
        let escalation = events.iter().find_map(|e| match e {
            EventBody::Escalation(x) => Some(x),
            _ => None,
        });
        let rated_low = events
            .iter()
            .any(|e| matches!(e, EventBody::Rating(r) if r.score <= 2));
        let cancelled = asked == Asked::CancelledAtOnce;
        if asked == Asked::Other && !rated_low {
            return None;
        }
        let asked_to_rephrase = !nlu.answered && active.conv.low_confidence_streak == 1;
        let reason = samples::reason(
            &nlu.intent,
            nlu.answered,
            &manifest.out_of_scope_label,
            escalation.is_some(),
            rated_low,
            asked_to_rephrase,
            cancelled,
        )?;
        let mut guesses = vec![Guess {
            label: nlu.intent.clone(),
            score: nlu.confidence,
        }];
        guesses.extend(runners_up.into_iter().flatten().filter_map(|(i, score)| {
            Some(Guess {
                label: model.label_of(i)?.to_owned(),
                score,
            })
        }));
        // "I want a person" or "/rate 1" teach nothing: the line the visitor
        // wrote before it does (its guesses were not kept).
        let text = if rated_low || cancelled || nlu.intent == edgedesk_dialog::HUMAN_AGENT {
            guesses.clear();
            let earlier = match escalation {
                Some(x) => x
                    .transcript
                    .iter()
                    .rev()
                    .filter(|l| l.from == Sender::Visitor && l.at < now && !l.text.starts_with('/'))
                    .map(|l| l.text.clone())
                    .next(),
                None => self
                    .d
                    .store
                    .history(&active.conv.id, 50)
                    .await
                    .unwrap_or_default()
                    .into_iter()
                    .rev()
                    .find(|h| h.from == Sender::Visitor && !h.text.starts_with('/'))
                    .map(|h| h.text),
            };
            earlier?
        } else {
            text.to_owned()
        };
        if active.sampled.as_deref() == Some(text.as_str()) {
            return None;
        }
        if !budget.take(now) {
            self.d.metrics.sample("dropped_budget");
            return None;
        }
        active.sampled = Some(text.clone());
        self.d.metrics.sample(reason.as_str());
        Some(EventBody::Sample(Sample {
            conversation: active.conv.id.clone(),
            text,
            lang: active.conv.lang,
            reason,
            model_version: manifest.version.to_string(),
            guesses,
        }))
    }

    /// The visitor picked the page language: it wins from now on. Before
    /// they have written, the greeting is rewritten in it.
    pub async fn set_lang(&self, active: &mut Active, lang: Lang) -> Vec<ServerFrame> {
        let changed = active.conv.lang != lang;
        active.conv.lang = lang;
        active.conv.lang_chosen = true;
        let write = build_write(active, Vec::new(), Vec::new(), None);
        if let Err(e) = self.d.store.commit(write).await {
            tracing::error!(error = %e, "storing language change failed");
            return Vec::new();
        }
        let Some(id) = active
            .welcome_id
            .filter(|_| changed && active.conv.visitor_turns == 0)
        else {
            return Vec::new();
        };
        let welcome = self.d.engine.welcome(lang);
        match self
            .d
            .store
            .edit_message(id, &welcome.text, welcome.quick_replies.clone())
            .await
        {
            Ok(true) => vec![ServerFrame::Edit {
                id,
                text: welcome.text,
                quick_replies: welcome.quick_replies,
            }],
            Ok(false) => Vec::new(),
            Err(e) => {
                tracing::error!(error = %e, "rewriting the greeting failed");
                Vec::new()
            }
        }
    }

    /// A waiting visitor has waited long enough: offer, once, to leave a
    /// message instead (stored like any line).
    pub async fn offer_message(&self, active: &mut Active) -> Vec<ServerFrame> {
        let Some(reply) = self.d.engine.offer_message(&mut active.conv) else {
            return Vec::new();
        };
        let write = build_write(
            active,
            vec![bot_message(&reply, now_ms())],
            Vec::new(),
            None,
        );
        match self.d.store.commit(write).await {
            Ok(ids) => vec![reply_frame(ids[0], reply, &active.conv)],
            Err(e) => {
                tracing::error!(error = %e, "storing the queue offer failed");
                self.restore(active).await;
                Vec::new()
            }
        }
    }

    /// When the held conversation's visitor should be offered to leave a
    /// message instead of waiting on (tokio instant), if ever.
    pub fn offer_deadline(&self, active: &Active) -> Option<tokio::time::Instant> {
        let due = active.offer_due(self.d.queue_offer_ms)?;
        let wait = u64::try_from(due - now_ms()).unwrap_or(0);
        Some(tokio::time::Instant::now() + std::time::Duration::from_millis(wait))
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
            trace: _,
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
            (AgentAction::Queue { position, .. }, active) => {
                if let Some(a) = active
                    .filter(|a| a.conv.id == conversation && a.conv.phase == Phase::WaitingForAgent)
                {
                    frames.push(ServerFrame::Notice {
                        code: "queue_position".into(),
                        text: self.d.engine.queue_position(&a.conv, position),
                    });
                }
                Ok(())
            }
            (action, Some(a)) if a.conv.id == conversation => {
                if a.conv.phase == Phase::Ended {
                    // A conversation the visitor ended is never reopened.
                    Err(format!("conversation {conversation} is over"))
                } else if action == AgentAction::Typing {
                    frames.push(ServerFrame::Typing {
                        from: Sender::Agent,
                    });
                    Ok(())
                } else {
                    match apply_action(&self.d.engine, &mut a.conv, &action) {
                        Err(e) => Err(e),
                        Ok(None) => Ok(()),
                        Ok(Some(reply)) => {
                            let write = build_write(
                                a,
                                vec![bot_message(&reply, now_ms())],
                                Vec::new(),
                                None,
                            );
                            match self.d.store.commit(write).await {
                                Ok(ids) => {
                                    frames.push(reply_frame(ids[0], reply, &a.conv));
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
                trace: edgedesk_support::telemetry::current(),
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
        if conv.id != conversation || conv.phase == Phase::Ended {
            return Err(format!("conversation {conversation} is over"));
        }
        let Some(reply) = apply_action(&self.d.engine, &mut conv, &action)? else {
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
            trace: None,
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

/// Apply an agent action to a conversation; the line to store and show, if
/// any. An agent joins or writes only while the visitor waits for (or is
/// with) a person: a visitor who stopped waiting is not joined behind their
/// back. Leaving or closing a chat nobody is in changes nothing.
fn apply_action(
    engine: &Engine,
    conv: &mut Conversation,
    action: &AgentAction,
) -> Result<Option<BotReply>, String> {
    let waiting = conv.phase == Phase::WaitingForAgent;
    let with_agent = matches!(conv.phase, Phase::WithAgent { .. });
    Ok(Some(match action {
        AgentAction::Joined { .. } | AgentAction::Message { .. } if !(waiting || with_agent) => {
            return Err(format!(
                "conversation {} no longer waits for a person",
                conv.id
            ));
        }
        AgentAction::Left | AgentAction::Closed if !with_agent => return Ok(None),
        AgentAction::Joined { agent } => engine.agent_joined(conv, agent),
        AgentAction::Message { agent, text } => engine.agent_message(conv, agent, text),
        AgentAction::Left => engine.agent_left(conv),
        AgentAction::Closed => engine.agent_closed(conv),
        AgentAction::Typing
        | AgentAction::LinkDown
        | AgentAction::LinkUp
        | AgentAction::Queue { .. } => return Ok(None),
    }))
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

/// Whom a visitor's line was for, as far as learning samples go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asked {
    /// The bot: a question it may have got wrong.
    Bot,
    /// "Cancel" at the first question of a flow the bot started.
    CancelledAtOnce,
    /// A flow's or the contact form's question, or an agent: never a sample.
    Other,
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
                // The turn's span: the controller continues its trace.
                trace: edgedesk_support::telemetry::current(),
                body,
            })
            .collect(),
    }
}

/// A stored reply as the page gets it.
fn reply_frame(id: i64, reply: BotReply, conv: &Conversation) -> ServerFrame {
    ServerFrame::Reply {
        id,
        from: reply.from,
        author: reply.author,
        text: reply.text,
        lang: conv.lang,
        quick_replies: reply.quick_replies,
        state: conv.chat_state(),
        intent: reply.intent,
        // The span that produced it: a bot turn, or an agent's line.
        traceparent: edgedesk_support::telemetry::current(),
    }
}

/// The newest lines of `history` that fit in `bytes` of JSON; `true` when
/// older ones were left out.
pub fn cap_history(mut history: Vec<HistoryItem>, bytes: usize) -> (Vec<HistoryItem>, bool) {
    let mut used = 0;
    let mut keep = history.len();
    for h in history.iter().rev() {
        // Text, quick replies and the frame's fixed fields, roughly as sent.
        let size = 96
            + h.text.len()
            + h.author.as_ref().map_or(0, String::len)
            + h.quick_replies
                .iter()
                .map(|q| q.label.len() + q.payload.len() + 32)
                .sum::<usize>();
        if used + size > bytes {
            break;
        }
        used += size;
        keep -= 1;
    }
    let more = keep > 0;
    (history.split_off(keep), more)
}

fn bot_message(reply: &BotReply, at: i64) -> NewMessage {
    NewMessage {
        sender: reply.from,
        author: reply.author.clone(),
        text: reply.text.clone(),
        quick_replies: reply.quick_replies.clone(),
        intent: reply.intent.clone(),
        confidence: None,
        at,
    }
}
