//! The chat WebSocket: one task per visitor connection.
//!
//! Order of checks per frame: rate limit → size → JSON → type → content.
//! Every rejection is an `error` frame with a code; the connection stays up,
//! except for a sustained flood (1008), an unsupported protocol version (1002),
//! shutdown (1001) and a session taken over by a newer connection (4001).
//! A visitor turn is acknowledged only after its SQLite transaction commits.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use edgedesk_common::chat::{
    ClientFrame, ErrorCode, HistoryItem, Lang, PROTOCOL_VERSION, Sender, ServerFrame,
};
use edgedesk_common::event::{Event, EventBody, TranscriptLine};
use futures_util::SinkExt;
use sha2::{Digest, Sha256};

use super::{AgentAction, AgentEvent, AppState, Claim};
use edgedesk_dialog::{BotReply, Command, Conversation, Phase, Turn, Understanding};
use edgedesk_nlu::entities;
use crate::store::{NewMessage, SessionRow, TurnWrite};

/// WebSocket close codes used by the node.
pub mod close {
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL: u16 = 1002;
    pub const POLICY: u16 = 1008;
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// The session was resumed by another connection.
    pub const TAKEN_OVER: u16 = 4001;
}

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

/// `true` if a browser page at `Origin` may open the socket: no Origin
/// (not a browser), the page's own host, or one of the allowed origins.
pub fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    if allowed
        .iter()
        .any(|a| a.trim_end_matches('/').eq_ignore_ascii_case(origin))
    {
        return true;
    }
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .unwrap_or("");
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    !authority.is_empty() && authority.eq_ignore_ascii_case(host)
}

pub async fn upgrade(
    ws: WebSocketUpgrade,
    headers: HeaderMap,
    State(app): State<Arc<AppState>>,
) -> Response {
    if !origin_allowed(&headers, &app.config.server.allowed_origins) {
        app.metrics.reject("origin");
        tracing::warn!(origin = ?headers.get(header::ORIGIN), "WebSocket refused: origin not allowed");
        return (StatusCode::FORBIDDEN, "origin not allowed\n").into_response();
    }
    if app.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    let permit = app.connections.clone().try_acquire_owned();
    // Frames above our own limit still get a polite `too_large` error; only far
    // larger ones are cut off by the WebSocket layer itself.
    let hard_cap = (app.config.server.max_frame_bytes * 4).max(16 * 1024);
    let tasks = app.tasks.clone();
    // Design: small per-connection buffers. tungstenite's defaults (128 KiB
    // each way) cost ~256 KiB per idle kiosk; chat frames are a few hundred bytes.
    ws.max_message_size(hard_cap)
        .max_frame_size(hard_cap)
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(hard_cap.max(64 * 1024))
        .on_upgrade(move |mut socket| {
            tasks.track_future(async move {
                match permit {
                    Ok(_permit) => Connection::new(app).run(socket).await,
                    Err(_) => {
                        app.metrics.reject("too_many_connections");
                        let _ = socket
                            .send(Message::Close(Some(CloseFrame {
                                code: close::TRY_AGAIN_LATER,
                                reason: Utf8Bytes::from_static("too many connections"),
                            })))
                            .await;
                    }
                }
            })
        })
}

/// Token bucket for the per-connection rate limit.
struct Bucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
}

impl Bucket {
    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A session held by this connection.
struct Active {
    id: String,
    token_hash: String,
    created_at: i64,
    conv: Conversation,
    claim: Claim,
    /// The model a multi-turn flow started on: the flow finishes on it even
    /// if a new model is swapped in meanwhile.
    flow_model: Option<Arc<edgedesk_nlu::Model>>,
}

enum Flow {
    Continue,
    Close(u16, &'static str),
}

struct Connection {
    app: Arc<AppState>,
    bucket: Bucket,
    violations: u32,
    session: Option<Active>,
    last_activity: tokio::time::Instant,
    /// Agent actions for the held session.
    agent_rx: Option<tokio::sync::mpsc::Receiver<AgentEvent>>,
}

/// What woke a connection up.
enum Wake {
    Shutdown,
    TakenOver,
    Idle,
    Agent(Option<AgentEvent>),
    Socket(Option<Result<Message, axum::Error>>),
}

async fn recv_agent(
    rx: &mut Option<tokio::sync::mpsc::Receiver<AgentEvent>>,
) -> Option<AgentEvent> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Apply an agent action to a conversation; the line to store and show, if any.
fn apply_action(
    engine: &edgedesk_dialog::Engine,
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

/// Apply an agent action straight to the stored conversation.
async fn deliver_offline(
    app: &AppState,
    conversation: &str,
    action: AgentAction,
) -> Result<(), String> {
    if matches!(
        action,
        AgentAction::Typing | AgentAction::LinkDown | AgentAction::LinkUp
    ) {
        return Ok(());
    }
    let row = app
        .store
        .session_by_conversation(conversation)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("unknown conversation {conversation}"))?;
    let mut conv: Conversation = serde_json::from_str(&row.state).map_err(|e| e.to_string())?;
    if conv.id != conversation {
        return Err(format!("conversation {conversation} is over"));
    }
    let Some(reply) = apply_action(&app.engine, &mut conv, &action) else {
        return Ok(());
    };
    let write = build_write(
        &row.id,
        &row.token_hash,
        row.created_at,
        &conv,
        vec![bot_message(&reply, now_ms())],
        Vec::new(),
        None,
    );
    app.store
        .commit(write)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Deliver an agent action to `conversation`: through the connection holding
/// it when the visitor is here (so its in-memory state stays right), else
/// straight to the store. `Ok` once it is stored.
pub async fn deliver_agent_action(
    app: &AppState,
    conversation: &str,
    action: AgentAction,
) -> Result<(), String> {
    let row = app
        .store
        .session_by_conversation(conversation)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("unknown conversation {conversation}"))?;
    if let Some(tx) = app.live_sender(&row.id) {
        let (done, wait) = tokio::sync::oneshot::channel();
        let ev = AgentEvent {
            conversation: conversation.to_owned(),
            action: action.clone(),
            done: Some(done),
        };
        if tx.send(ev).await.is_ok() {
            if let Ok(r) = wait.await {
                return r;
            }
        }
        // The connection went away meanwhile: fall through to the store.
    }
    deliver_offline(app, conversation, action).await
}

impl Connection {
    fn new(app: Arc<AppState>) -> Connection {
        let s = &app.config.server;
        let bucket = Bucket {
            tokens: s.rate_limit_burst as f64,
            rate: s.rate_limit_per_sec,
            burst: s.rate_limit_burst as f64,
            last: Instant::now(),
        };
        Connection {
            app,
            bucket,
            violations: 0,
            session: None,
            last_activity: tokio::time::Instant::now(),
            agent_rx: None,
        }
    }

    /// An agent action for a conversation: apply, store, show.
    async fn agent_event(&mut self, socket: &mut WebSocket, ev: AgentEvent) {
        let AgentEvent {
            conversation,
            action,
            done,
        } = ev;
        if matches!(action, AgentAction::LinkDown | AgentAction::LinkUp) {
            let with_agent = self
                .session
                .as_ref()
                .is_some_and(|a| matches!(a.conv.phase, Phase::WithAgent { .. }));
            if with_agent {
                let (code, text) = if action == AgentAction::LinkDown {
                    (
                        "agent_reconnecting",
                        "Our colleague's connection was interrupted. They are reconnecting; your messages will reach them.",
                    )
                } else {
                    ("agent_reconnected", "Our colleague is back.")
                };
                let _ = send(
                    socket,
                    &ServerFrame::Notice {
                        code: code.into(),
                        text: text.into(),
                    },
                )
                .await;
            }
            return;
        }
        let holds_it = self
            .session
            .as_ref()
            .is_some_and(|a| a.conv.id == conversation);
        let result = if !holds_it {
            // The visitor has moved on to another conversation: store only.
            Box::pin(deliver_offline(&self.app, &conversation, action)).await
        } else if action == AgentAction::Typing {
            let _ = send(
                socket,
                &ServerFrame::Typing {
                    from: Sender::Agent,
                },
            )
            .await;
            Ok(())
        } else {
            let app = self.app.clone();
            let active = self.session.as_mut().expect("checked");
            let before = active.conv.clone();
            match apply_action(&app.engine, &mut active.conv, &action) {
                None => Ok(()),
                Some(reply) => {
                    let now = now_ms();
                    let write = self.write(vec![bot_message(&reply, now)], Vec::new(), None);
                    match app.store.commit(write).await {
                        Ok(ids) => {
                            let a = self.session.as_ref().expect("checked");
                            let _ = send(
                                socket,
                                &ServerFrame::Reply {
                                    id: ids[0],
                                    from: reply.from,
                                    text: reply.text,
                                    lang: a.conv.lang,
                                    quick_replies: reply.quick_replies,
                                    state: a.conv.chat_state(),
                                    intent: None,
                                },
                            )
                            .await;
                            Ok(())
                        }
                        Err(e) => {
                            if let Some(a) = self.session.as_mut() {
                                a.conv = before;
                            }
                            Err(e.to_string())
                        }
                    }
                }
            }
        };
        if let Some(done) = done {
            let _ = done.send(result);
        }
    }

    async fn run(mut self, mut socket: WebSocket) {
        self.app.metrics.connections.inc();
        let idle = Duration::from_secs(
            u64::from(self.app.config.retention.idle_conversation_minutes) * 60,
        );
        let shutdown = self.app.shutdown.clone();
        let end = loop {
            let taken_over = self.session.as_ref().map(|s| s.claim.token.clone());
            let conversation_open = self
                .session
                .as_ref()
                .is_some_and(|s| s.conv.phase != Phase::Ended);
            let idle_deadline = self.last_activity + idle;
            // Wait for the next thing to do; handle it once the borrows of the
            // wait are over.
            let wake = {
                let agent_rx = &mut self.agent_rx;
                tokio::select! {
                    _ = shutdown.cancelled() => Wake::Shutdown,
                    _ = async { taken_over.unwrap().cancelled().await }, if taken_over.is_some() => Wake::TakenOver,
                    _ = tokio::time::sleep_until(idle_deadline), if conversation_open => Wake::Idle,
                    ev = recv_agent(agent_rx) => Wake::Agent(ev),
                    msg = socket.recv() => Wake::Socket(msg),
                }
            };
            match wake {
                Wake::Shutdown => break Some((close::GOING_AWAY, "server shutting down")),
                Wake::TakenOver => {
                    let _ = send(
                        &mut socket,
                        &ServerFrame::Notice {
                            code: "session_taken_over".into(),
                            text: "This chat was opened in another window.".into(),
                        },
                    )
                    .await;
                    break Some((close::TAKEN_OVER, "session resumed elsewhere"));
                }
                Wake::Idle => self.end_idle(&mut socket).await,
                Wake::Agent(Some(ev)) => self.agent_event(&mut socket, ev).await,
                Wake::Agent(None) => self.agent_rx = None,
                Wake::Socket(msg) => match msg {
                    None | Some(Ok(Message::Close(_))) => break None,
                    Some(Err(e)) => {
                        // Invalid UTF-8, oversized or malformed frames end here.
                        tracing::debug!(error = %e, "WebSocket protocol error");
                        self.app.metrics.reject("protocol");
                        break None;
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Ok(other)) => match self.frame(&mut socket, other).await {
                        Flow::Continue => {}
                        Flow::Close(code, reason) => break Some((code, reason)),
                    },
                },
            }
        };
        if let Some((code, reason)) = end {
            let _ = socket
                .send(Message::Close(Some(CloseFrame {
                    code,
                    reason: Utf8Bytes::from_static(reason),
                })))
                .await;
        }
        if let Some(active) = &self.session {
            self.app.release_session(&active.id, &active.claim);
        }
        self.app.metrics.connections.dec();
    }

    async fn reject(
        &mut self,
        socket: &mut WebSocket,
        code: ErrorCode,
        message: impl Into<String>,
    ) {
        self.app.metrics.reject(code.as_str());
        let _ = send(
            socket,
            &ServerFrame::Error {
                code,
                message: message.into(),
            },
        )
        .await;
    }

    async fn frame(&mut self, socket: &mut WebSocket, msg: Message) -> Flow {
        if !self.bucket.take() {
            self.violations += 1;
            if self.violations >= self.app.config.server.rate_limit_close_after {
                self.app.metrics.reject("flood");
                return Flow::Close(close::POLICY, "rate limit exceeded");
            }
            self.reject(
                socket,
                ErrorCode::RateLimited,
                "too many messages; slow down",
            )
            .await;
            return Flow::Continue;
        }
        let text = match msg {
            Message::Text(t) => t,
            _ => {
                self.reject(
                    socket,
                    ErrorCode::BinaryNotSupported,
                    "binary frames are not supported; send JSON text",
                )
                .await;
                return Flow::Continue;
            }
        };
        let limit = self.app.config.server.max_frame_bytes;
        if text.len() > limit {
            self.reject(
                socket,
                ErrorCode::TooLarge,
                format!(
                    "frame of {} bytes exceeds the {limit}-byte limit",
                    text.len()
                ),
            )
            .await;
            return Flow::Continue;
        }
        let frame = match ClientFrame::decode(text.as_str()) {
            Ok(f) => f,
            Err(e) => {
                self.reject(socket, e.code(), e.to_string()).await;
                return Flow::Continue;
            }
        };
        match frame {
            ClientFrame::Hello { v, session, lang } => {
                if v != PROTOCOL_VERSION {
                    self.reject(
                        socket,
                        ErrorCode::UnsupportedVersion,
                        format!("protocol version {v} is not supported; this node speaks {PROTOCOL_VERSION}"),
                    )
                    .await;
                    return Flow::Close(close::PROTOCOL, "unsupported protocol version");
                }
                self.hello(socket, session, lang).await;
            }
            ClientFrame::Message {
                text,
                client_id,
                payload,
            } => {
                if self.session.is_none() {
                    self.reject(socket, ErrorCode::HelloRequired, "send a hello frame first")
                        .await;
                    return Flow::Continue;
                }
                let trimmed = text.trim();
                if trimmed.is_empty() {
                    self.reject(socket, ErrorCode::EmptyMessage, "message is empty")
                        .await;
                    return Flow::Continue;
                }
                self.last_activity = tokio::time::Instant::now();
                self.turn(socket, trimmed.to_owned(), client_id, payload)
                    .await;
            }
            ClientFrame::SetLang { lang } => {
                if let Some(active) = self.session.as_mut() {
                    active.conv.lang = lang;
                    let write = self.write(Vec::new(), Vec::new(), None);
                    if let Err(e) = self.app.store.commit(write).await {
                        tracing::error!(error = %e, "storing language change failed");
                    }
                }
            }
            ClientFrame::Typing => {
                let with_agent = self
                    .session
                    .as_ref()
                    .filter(|a| matches!(a.conv.phase, Phase::WithAgent { .. }));
                if let (Some(a), Some(tx)) = (with_agent, self.app.typing_tx.get()) {
                    let _ = tx.try_send(a.conv.id.clone());
                }
            }
            ClientFrame::Ping => {
                let _ = send(socket, &ServerFrame::Pong).await;
            }
        }
        Flow::Continue
    }

    /// Build the write for the current session state plus `messages` and `events`.
    fn write(
        &self,
        messages: Vec<NewMessage>,
        events: Vec<EventBody>,
        start: Option<(String, i64)>,
    ) -> TurnWrite {
        let a = self.session.as_ref().expect("write needs a session");
        build_write(
            &a.id,
            &a.token_hash,
            a.created_at,
            &a.conv,
            messages,
            events,
            start,
        )
    }

    async fn hello(&mut self, socket: &mut WebSocket, token: Option<String>, lang: Option<Lang>) {
        if let Some(old) = self.session.take() {
            self.app.release_session(&old.id, &old.claim);
        }
        if let Some(token) = token {
            let hash = hash_token(&token);
            match self.app.store.session_by_token_hash(&hash).await {
                Ok(Some(row)) => match serde_json::from_str::<Conversation>(&row.state) {
                    Ok(conv) => return self.resume(socket, token, row, conv).await,
                    Err(e) => {
                        tracing::error!(error = %e, session = %row.id, "stored session state unreadable; starting anew")
                    }
                },
                Ok(None) => {
                    self.reject(
                        socket,
                        ErrorCode::UnknownSession,
                        "unknown session; a new one was started",
                    )
                    .await;
                }
                Err(e) => {
                    tracing::error!(error = %e, "session lookup failed");
                    self.reject(
                        socket,
                        ErrorCode::Internal,
                        "could not look up the session; a new one was started",
                    )
                    .await;
                }
            }
        }
        let lang = lang.unwrap_or_default();
        let token = new_token();
        let id = uuid::Uuid::new_v4().to_string();
        let now = now_ms();
        let conv = Conversation::new(uuid::Uuid::new_v4().to_string(), lang, now);
        let (claim, agent_rx) = self.app.claim_session(&id);
        self.agent_rx = Some(agent_rx);
        self.session = Some(Active {
            id,
            token_hash: hash_token(&token),
            created_at: now,
            conv,
            claim,
            flow_model: None,
        });
        let welcome = self.app.engine.welcome(lang);
        let messages = vec![bot_message(&welcome, now)];
        let write = self.write(messages, Vec::new(), Some((lang.as_str().into(), now)));
        match self.app.store.commit(write).await {
            Ok(ids) => {
                self.app.metrics.session("new");
                self.app.metrics.message("out", 1);
                let a = self.session.as_ref().expect("just set");
                let history = vec![HistoryItem {
                    id: ids[0],
                    from: Sender::Bot,
                    text: welcome.text,
                    quick_replies: welcome.quick_replies,
                    at: now,
                }];
                let _ = send(
                    socket,
                    &ServerFrame::Welcome {
                        v: PROTOCOL_VERSION,
                        session: token,
                        conversation: a.conv.id.clone(),
                        lang,
                        state: a.conv.chat_state(),
                        resumed: false,
                        history,
                    },
                )
                .await;
            }
            Err(e) => {
                tracing::error!(error = %e, "storing a new session failed");
                if let Some(a) = self.session.take() {
                    self.app.release_session(&a.id, &a.claim);
                }
                self.reject(
                    socket,
                    ErrorCode::Internal,
                    "could not start a session; please retry",
                )
                .await;
            }
        }
    }

    async fn resume(
        &mut self,
        socket: &mut WebSocket,
        token: String,
        row: SessionRow,
        conv: Conversation,
    ) {
        let (claim, agent_rx) = self.app.claim_session(&row.id);
        self.agent_rx = Some(agent_rx);
        let history = match self
            .app
            .store
            .history(&conv.id, self.app.config.server.history_limit)
            .await
        {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(error = %e, "loading history failed");
                Vec::new()
            }
        };
        self.app.metrics.session("resumed");
        let frame = ServerFrame::Welcome {
            v: PROTOCOL_VERSION,
            session: token,
            conversation: conv.id.clone(),
            lang: conv.lang,
            state: conv.chat_state(),
            resumed: true,
            history,
        };
        self.session = Some(Active {
            id: row.id,
            token_hash: row.token_hash,
            created_at: row.created_at,
            conv,
            claim,
            flow_model: None,
        });
        let _ = send(socket, &frame).await;
    }

    async fn turn(
        &mut self,
        socket: &mut WebSocket,
        text: String,
        client_id: Option<String>,
        payload: Option<String>,
    ) {
        let started = Instant::now();
        let app = self.app.clone();
        let now = now_ms();
        let active = self.session.as_mut().expect("checked by caller");
        let before = active.conv.clone();
        let mut start = None;
        if active.conv.phase == Phase::Ended {
            active.conv =
                Conversation::new(uuid::Uuid::new_v4().to_string(), active.conv.lang, now);
            start = Some((active.conv.lang.as_str().to_owned(), now));
        }
        let command = payload
            .as_deref()
            .and_then(Command::parse)
            .or_else(|| Command::parse(&text));
        let nlu_started = Instant::now();
        let in_flow = matches!(active.conv.phase, Phase::Flow(_));
        let model = match (&active.flow_model, in_flow) {
            (Some(m), true) => m.clone(),
            _ => app.model.get(),
        };
        let nlu = match model.classify(&text) {
            Ok(p) => Understanding {
                intent: p.label,
                confidence: p.confidence,
                answered: p.answered,
            },
            Err(e) => {
                tracing::error!(error = %e, "classification failed; treating as not understood");
                Understanding {
                    intent: String::new(),
                    confidence: 0.0,
                    answered: false,
                }
            }
        };
        app.metrics
            .nlu_latency
            .observe(nlu_started.elapsed().as_secs_f64());
        if nlu.answered {
            app.metrics.intent(&nlu.intent);
        } else {
            app.metrics.unanswered.inc();
        }

        let today = chrono::Local::now().date_naive();
        let turn = Turn {
            text: &text,
            command,
            nlu: nlu.clone(),
            entities: entities::extract(&text, today),
            today,
            now_ms: now,
            // With a live cloud link a colleague can be found; without it, offer a message.
            agents_available: app.metrics.uplink_connected.get() == 1,
        };
        let outcome = app.engine.handle(&mut active.conv, &turn);
        app.models.observe(
            &model.manifest().version,
            nlu.answered,
            outcome
                .events
                .iter()
                .any(|e| matches!(e, EventBody::Escalation(_))),
        );
        active.flow_model = match active.conv.phase {
            Phase::Flow(_) => Some(model.clone()),
            _ => None,
        };
        let mut messages = vec![NewMessage {
            sender: Sender::Visitor,
            text: text.clone(),
            quick_replies: Vec::new(),
            intent: nlu.answered.then(|| nlu.intent.clone()),
            confidence: (!nlu.intent.is_empty()).then_some(nlu.confidence),
            at: now,
        }];
        messages.extend(outcome.replies.iter().map(|r| bot_message(r, now)));
        let mut events = outcome.events.clone();
        // An escalation carries the conversation so far, for the agent.
        if events.iter().any(|e| matches!(e, EventBody::Escalation(_))) {
            let conv_id = self
                .session
                .as_ref()
                .map(|a| a.conv.id.clone())
                .unwrap_or_default();
            let mut transcript: Vec<TranscriptLine> = app
                .store
                .history(&conv_id, 200)
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
            for e in events.iter_mut() {
                if let EventBody::Escalation(x) = e {
                    x.transcript = transcript.clone();
                }
            }
        }
        let write = self.write(messages, events, start);
        let ids = match app.store.commit(write).await {
            Ok(ids) => ids,
            Err(e) => {
                tracing::error!(error = %e, "storing a turn failed");
                if let Some(a) = self.session.as_mut() {
                    a.conv = before;
                }
                self.reject(
                    socket,
                    ErrorCode::Internal,
                    "your message could not be stored; please send it again",
                )
                .await;
                return;
            }
        };
        if !outcome.events.is_empty() {
            app.outbox_notify.notify_one();
        }
        for ev in &outcome.events {
            match ev {
                EventBody::Escalation(_) => {
                    app.metrics.escalations.inc();
                }
                EventBody::OfflineMessage(_) => {
                    app.metrics.offline_messages.inc();
                }
                EventBody::ConversationSummary(s) => app.metrics.ended(&s.reason),
                EventBody::FlowCompleted(_) | EventBody::ChatLine(_) | EventBody::Rating(_) => {}
            }
        }
        app.metrics.message("in", 1);
        app.metrics.message("out", outcome.replies.len() as u64);
        let a = self.session.as_ref().expect("still set");
        // Queue the ack and every reply, then flush once: one write, one wake-up.
        let mut frames = vec![ServerFrame::Ack {
            client_id,
            id: ids[0],
        }];
        for (reply, id) in outcome.replies.into_iter().zip(ids.into_iter().skip(1)) {
            frames.push(ServerFrame::Reply {
                id,
                from: reply.from,
                text: reply.text,
                lang: a.conv.lang,
                quick_replies: reply.quick_replies,
                state: a.conv.chat_state(),
                intent: reply.intent,
            });
        }
        for f in &frames {
            let _ = socket
                .feed(Message::Text(Utf8Bytes::from(f.to_json())))
                .await;
        }
        let _ = socket.flush().await;
        app.metrics
            .turn_latency
            .observe(started.elapsed().as_secs_f64());
    }

    async fn end_idle(&mut self, socket: &mut WebSocket) {
        let now = now_ms();
        let Some(active) = self.session.as_mut() else {
            return;
        };
        let Some(summary) = self.app.engine.end(&mut active.conv, "idle", now) else {
            return;
        };
        let write = self.write(Vec::new(), vec![summary], None);
        match self.app.store.commit(write).await {
            Ok(_) => {
                self.app.metrics.ended("idle");
                let _ = send(
                    socket,
                    &ServerFrame::Notice {
                        code: "conversation_ended".into(),
                        text: "This conversation ended after a period of inactivity.".into(),
                    },
                )
                .await;
            }
            Err(e) => tracing::error!(error = %e, "ending an idle conversation failed"),
        }
        self.last_activity = tokio::time::Instant::now();
    }
}

/// One atomic write: the session's new state, its messages, and the events
/// (given ids and timestamps here) that describe the change.
pub(crate) fn build_write(
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

async fn send(socket: &mut WebSocket, frame: &ServerFrame) -> Result<(), axum::Error> {
    socket
        .send(Message::Text(Utf8Bytes::from(frame.to_json())))
        .await
}
