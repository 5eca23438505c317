//! The agents' console API (issue 4 groundwork): login, logout, the current
//! agent, and agent management by admins.
//!
//! Every request is authenticated by the session cookie (`edgedesk_session`,
//! HttpOnly, SameSite=Strict, Secure when configured); every state-changing
//! request must also carry the session's CSRF token in `X-CSRF-Token`. Roles
//! are checked on the server for each route.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

use super::Http;
use super::api::ErrorBody;
use crate::downlink::now_ms;
use crate::handoff::{ConsoleIn, ConsoleOut};
use crate::store::{
    AccountError, AgentRow, Canned, ChatFilter, ChatView, DayStats, NewAgent, Role, SessionLimits,
    StoreError, Ticket, TicketError,
};

pub const COOKIE: &str = "edgedesk_session";
pub const CSRF_HEADER: &str = "x-csrf-token";

/// Errors at the console's HTTP edge; internals are logged, not shown.
#[derive(Debug)]
pub enum ConsoleError {
    Unauthenticated,
    /// A login with a wrong username or password (one neutral message: it
    /// does not tell which of the two was wrong).
    WrongCredentials,
    Forbidden(&'static str),
    BadRequest(String),
    NotFound,
    /// Not found, with what the user can do about it.
    NotFoundWhy(String),
    TooManyAttempts(i64),
    /// Too many logins are being checked at once.
    Busy,
    /// The request clashes with the current state (a run already running…).
    Conflict(String),
    Internal(String),
}

impl From<StoreError> for ConsoleError {
    fn from(e: StoreError) -> Self {
        ConsoleError::Internal(e.to_string())
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let (status, msg) = match self {
            ConsoleError::Unauthenticated => (StatusCode::UNAUTHORIZED, "please log in".to_owned()),
            ConsoleError::WrongCredentials => (
                StatusCode::UNAUTHORIZED,
                "wrong username or password".to_owned(),
            ),
            ConsoleError::Forbidden(why) => (StatusCode::FORBIDDEN, why.to_owned()),
            ConsoleError::Conflict(m) => (StatusCode::CONFLICT, m),
            ConsoleError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            ConsoleError::NotFound => (StatusCode::NOT_FOUND, "not found".to_owned()),
            ConsoleError::NotFoundWhy(m) => (StatusCode::NOT_FOUND, m),
            ConsoleError::TooManyAttempts(ms) => {
                let secs = (ms / 1000).max(1);
                let mut r = (
                    StatusCode::TOO_MANY_REQUESTS,
                    Json(ErrorBody {
                        error: format!("too many failed logins; try again in {secs} s"),
                    }),
                )
                    .into_response();
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs));
                return r;
            }
            ConsoleError::Busy => {
                let mut r = (
                    StatusCode::SERVICE_UNAVAILABLE,
                    Json(ErrorBody {
                        error: "too many logins at once; try again in a moment".into(),
                    }),
                )
                    .into_response();
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(1));
                return r;
            }
            ConsoleError::Internal(m) => {
                tracing::error!(error = %m, "console request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error".to_owned(),
                )
            }
        };
        (status, Json(ErrorBody { error: msg })).into_response()
    }
}

fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_owned())
}

/// The session limits from the configuration.
fn limits(s: &Http) -> SessionLimits {
    SessionLimits {
        idle_ms: s.console.idle_timeout_minutes as i64 * 60_000,
        max_ms: s.console.session_max_hours as i64 * 3_600_000,
    }
}

/// The logged-in agent and the session's CSRF token; `touch` counts the
/// request as the agent's activity (reads and polling do not).
async fn current(
    s: &Http,
    headers: &HeaderMap,
    touch: bool,
) -> Result<(AgentRow, String), ConsoleError> {
    let token = cookie_value(headers).ok_or(ConsoleError::Unauthenticated)?;
    s.store
        .session(&token, now_ms(), limits(s), touch)
        .await?
        .ok_or(ConsoleError::Unauthenticated)
}

/// `current` plus a CSRF check and a minimum role, for state-changing routes.
async fn authorized(
    s: &Http,
    headers: &HeaderMap,
    min: Role,
    changing: bool,
) -> Result<AgentRow, ConsoleError> {
    let (agent, csrf) = current(s, headers, changing).await?;
    if changing {
        let given = headers
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        // Digests compared, so the time taken says nothing about the token.
        if given.is_empty() || crate::store::sha256_hex(given) != crate::store::sha256_hex(&csrf) {
            return Err(ConsoleError::Forbidden("missing or wrong CSRF token"));
        }
    }
    if agent.role < min {
        return Err(ConsoleError::Forbidden("your role does not allow this"));
    }
    Ok(agent)
}

#[derive(Deserialize)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
}

#[derive(Serialize, Deserialize)]
pub struct SessionView {
    pub agent: AgentRow,
    /// Send back in `X-CSRF-Token` on every state-changing request.
    pub csrf: String,
}

type S = State<Arc<Http>>;

/// Longest username (accounts allow 32) and password a login may send.
const MAX_USERNAME: usize = 64;
const MAX_PASSWORD: usize = 1024;

async fn login(
    State(s): S,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Json(req): Json<LoginRequest>,
) -> Result<Response, ConsoleError> {
    if req.username.len() > MAX_USERNAME || req.password.len() > MAX_PASSWORD {
        return Err(ConsoleError::BadRequest(format!(
            "a username has at most {MAX_USERNAME} bytes and a password at most {MAX_PASSWORD}"
        )));
    }
    let now = now_ms();
    // Through a standby: the address it judged; else the peer's, or the one
    // a trusted proxy names.
    let ip = super::forward::forwarded_client(&headers, &s.admin_token).unwrap_or_else(|| {
        let forwarded = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok());
        crate::accounts::client_address(peer.ip(), forwarded, &s.trusted_proxies)
    });
    // A name that cannot be an account is never a limiter key of its own.
    let user = crate::store::agents::valid_username(&req.username).then_some(req.username.as_str());
    let attempt = s
        .limiter
        .reserve(user, &ip.to_string(), now)
        .map_err(ConsoleError::TooManyAttempts)?;
    let agent = if user.is_some() {
        match crate::accounts::authenticate(&s.store, &req.username, &req.password).await {
            Ok(agent) => agent,
            Err(crate::accounts::AuthError::Busy) => {
                s.limiter.release(attempt);
                return Err(ConsoleError::Busy);
            }
            Err(crate::accounts::AuthError::Store(e)) => {
                s.limiter.release(attempt);
                return Err(e.into());
            }
        }
    } else {
        None
    };
    let Some(agent) = agent else {
        tracing::warn!(username = %edgedesk_support::logging::clip(&req.username), %ip, "console login failed");
        return Err(ConsoleError::WrongCredentials);
    };
    s.limiter.succeeded(attempt);
    // A fresh token at every login (no session fixation).
    let (token, csrf) = s.store.session_open(&agent.id, now).await?;
    let secure = if s.console.secure_cookies {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!("{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict{secure}");
    let mut resp = Json(SessionView { agent, csrf }).into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).map_err(|e| ConsoleError::Internal(e.to_string()))?,
    );
    Ok(resp)
}

async fn logout(State(s): S, headers: HeaderMap) -> Result<Response, ConsoleError> {
    authorized(&s, &headers, Role::Agent, true).await?;
    if let Some(token) = cookie_value(&headers) {
        s.store.session_close(&token).await?;
    }
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("edgedesk_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    Ok(resp)
}

async fn me(State(s): S, headers: HeaderMap) -> Result<Json<SessionView>, ConsoleError> {
    let (agent, csrf) = current(&s, &headers, false).await?;
    Ok(Json(SessionView { agent, csrf }))
}

async fn list_agents(State(s): S, headers: HeaderMap) -> Result<Json<Vec<AgentRow>>, ConsoleError> {
    authorized(&s, &headers, Role::Supervisor, false).await?;
    Ok(Json(s.store.agents().await?))
}

fn account_error(e: AccountError) -> ConsoleError {
    match e {
        AccountError::NotFound => ConsoleError::NotFound,
        other => ConsoleError::BadRequest(other.to_string()),
    }
}

async fn create_agent(
    State(s): S,
    headers: HeaderMap,
    Json(req): Json<NewAgent>,
) -> Result<(StatusCode, Json<AgentRow>), ConsoleError> {
    authorized(&s, &headers, Role::Admin, true).await?;
    let now = now_ms();
    let row = crate::accounts::create_account(&s.store, req, now)
        .await?
        .map_err(account_error)?;
    Ok((StatusCode::CREATED, Json(row)))
}

async fn disable_agent(
    State(s): S,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ConsoleError> {
    let me = authorized(&s, &headers, Role::Admin, true).await?;
    if me.id == id {
        return Err(ConsoleError::BadRequest(
            "you cannot disable yourself".into(),
        ));
    }
    s.store.agent_disable(&id).await?.map_err(account_error)?;
    let _ = s.accounts_changed.send(id);
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
pub struct RoleRequest {
    pub role: Role,
}

/// An admin changes an agent's role; their open consoles reconnect with it.
async fn set_role(
    State(s): S,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(req): Json<RoleRequest>,
) -> Result<StatusCode, ConsoleError> {
    let me = authorized(&s, &headers, Role::Admin, true).await?;
    if me.id == id {
        return Err(ConsoleError::BadRequest(
            "you cannot change your own role".into(),
        ));
    }
    s.store
        .agent_set_role(&id, req.role)
        .await?
        .map_err(account_error)?;
    let _ = s.accounts_changed.send(id);
    Ok(StatusCode::NO_CONTENT)
}

/// `true` unless a browser page from another origin opens the socket.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) else {
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .unwrap_or("");
    !authority.is_empty() && authority.eq_ignore_ascii_case(host)
}

/// The agent's live console socket: `ConsoleOut` frames down, `ConsoleIn` up.
async fn console_ws(
    ws: WebSocketUpgrade,
    State(s): S,
    headers: HeaderMap,
) -> Result<Response, ConsoleError> {
    if !same_origin(&headers) {
        return Err(ConsoleError::Forbidden("origin not allowed"));
    }
    let (agent, _) = current(&s, &headers, true).await?;
    let token = cookie_value(&headers).ok_or(ConsoleError::Unauthenticated)?;
    Ok(ws
        .max_message_size(16 * 1024)
        .max_frame_size(16 * 1024)
        .on_upgrade(move |socket| agent_socket(s, agent, token, socket)))
}

/// How often an open console re-checks its session (idle and absolute
/// expiry); a disabled or re-roled account is noticed at once.
const SESSION_RECHECK: std::time::Duration = std::time::Duration::from_secs(15);
/// Close code for a console whose session ended or whose role changed; the
/// page asks `/console/api/me` what to do next.
const CLOSE_SESSION_ENDED: u16 = 4401;

/// The account behind an open console as it is now: `None` if the session
/// ended or the role is no longer the one the socket was opened with.
async fn still_valid(s: &Http, token: &str, opened: &AgentRow, touch: bool) -> Option<AgentRow> {
    match s.store.session(token, now_ms(), limits(s), touch).await {
        Ok(Some((agent, _))) if agent.role == opened.role => Some(agent),
        Ok(_) => None,
        // A store hiccup is not the agent's fault: keep the socket.
        Err(e) => {
            tracing::warn!(error = %e, "checking a console session failed");
            Some(opened.clone())
        }
    }
}

async fn agent_socket(s: Arc<Http>, agent: AgentRow, token: String, mut socket: WebSocket) {
    let (tx, mut rx) =
        tokio::sync::mpsc::channel::<ConsoleOut>(crate::handoff::driver::SOCKET_QUEUE);
    s.handoff.connect(agent.clone(), tx.clone()).await;
    let mut changes = s.accounts_changed.subscribe();
    let mut recheck = tokio::time::interval(SESSION_RECHECK);
    recheck.tick().await;
    loop {
        tokio::select! {
            changed = changes.recv() => {
                let mine = match changed {
                    Ok(id) => id == agent.id,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => true,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => false,
                };
                if mine && still_valid(&s, &token, &agent, false).await.is_none() {
                    break close_ended(&mut socket).await;
                }
            }
            _ = recheck.tick() => {
                if still_valid(&s, &token, &agent, false).await.is_none() {
                    break close_ended(&mut socket).await;
                }
            }
            out = rx.recv() => {
                let Some(out) = out else { break };
                let text = serde_json::to_string(&out).unwrap_or_default();
                if socket.send(Message::Text(text.into())).await.is_err() {
                    break;
                }
            }
            msg = socket.recv() => {
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    _ => break,
                };
                // Every frame is authorised by the account as it is now, and
                // counts as the agent's activity.
                let Some(now_agent) = still_valid(&s, &token, &agent, true).await else {
                    break close_ended(&mut socket).await;
                };
                let (result, client_id) = match serde_json::from_str::<ConsoleIn>(text.as_str()) {
                    Ok(frame) => {
                        let client_id = match &frame {
                            ConsoleIn::Message { client_id, .. } => client_id.clone(),
                            _ => None,
                        };
                        (s.handoff.console(now_agent, frame).await, client_id)
                    }
                    Err(e) => (Err(format!("invalid frame: {e}")), None),
                };
                let answer = match (result, client_id) {
                    (Ok(()), Some(client_id)) => ConsoleOut::Ack { client_id },
                    (Ok(()), None) => continue,
                    (Err(message), client_id) => ConsoleOut::Error { message, client_id },
                };
                let text = serde_json::to_string(&answer).unwrap_or_default();
                if socket.send(Message::Text(text.into())).await.is_err() {
                    break;
                }
            }
        }
    }
    s.handoff.disconnect(&agent.id, tx).await;
}

/// Tell the page its session ended (or its role changed) and close.
async fn close_ended(socket: &mut WebSocket) {
    let _ = socket
        .send(Message::Close(Some(axum::extract::ws::CloseFrame {
            code: CLOSE_SESSION_ENDED,
            reason: "session ended".into(),
        })))
        .await;
}

const PAGE: &str = include_str!("../../assets/console.html");
const SCRIPT: &str = include_str!("../../assets/console.js");
const STYLE: &str = include_str!("../../assets/console.css");
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// History: agents see their own chats, supervisors and admins everyone's.
async fn list_chats(
    State(s): S,
    headers: HeaderMap,
    Query(mut f): Query<ChatFilter>,
) -> Result<Json<Vec<ChatView>>, ConsoleError> {
    let me = authorized(&s, &headers, Role::Agent, false).await?;
    if me.role < Role::Supervisor {
        f.agent = Some(me.id.clone());
    }
    Ok(Json(s.store.chats(f).await?))
}

/// One chat with its transcript (an agent only their own).
async fn get_chat(
    State(s): S,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<ChatView>, ConsoleError> {
    let me = authorized(&s, &headers, Role::Agent, false).await?;
    let view = s.store.chat(&id).await?.ok_or(ConsoleError::NotFound)?;
    if me.role < Role::Supervisor && view.agent_id.as_deref() != Some(me.id.as_str()) {
        return Err(ConsoleError::Forbidden("that chat is not yours"));
    }
    Ok(Json(view))
}

fn ticket_error(e: TicketError) -> ConsoleError {
    use TicketError as T;
    match e {
        T::NotFound => ConsoleError::NotFound,
        T::NotYours => ConsoleError::Forbidden(
            "only the agent who claimed it (or a supervisor) may resolve it",
        ),
        other => ConsoleError::BadRequest(other.to_string()),
    }
}

/// Offline messages: open tickets and the caller's own (supervisors: all).
async fn list_tickets(State(s): S, headers: HeaderMap) -> Result<Json<Vec<Ticket>>, ConsoleError> {
    let me = authorized(&s, &headers, Role::Agent, false).await?;
    let all = me.role >= Role::Supervisor;
    Ok(Json(s.store.tickets(&me.id, all).await?))
}

async fn claim_ticket(
    State(s): S,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Ticket>, ConsoleError> {
    let me = authorized(&s, &headers, Role::Agent, true).await?;
    let t = s
        .store
        .ticket_claim(&id, &me.id)
        .await?
        .map_err(ticket_error)?;
    Ok(Json(t))
}

/// The conversation an offline message came from, for whoever may see the
/// ticket: open tickets for everyone, claimed ones for their agent and
/// supervisors.
async fn ticket_transcript(
    State(s): S,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<ChatView>, ConsoleError> {
    let me = authorized(&s, &headers, Role::Agent, false).await?;
    let t = s.store.ticket(&id).await?.ok_or(ConsoleError::NotFound)?;
    let visible = me.role >= Role::Supervisor
        || t.state == "open"
        || t.agent_id.as_deref() == Some(me.id.as_str());
    if !visible {
        return Err(ConsoleError::Forbidden("that ticket is a colleague's"));
    }
    let view = s.store.chat(&t.conversation).await?.ok_or_else(|| {
        ConsoleError::NotFoundWhy(
            "no transcript yet: the branch sends it when the conversation ends".into(),
        )
    })?;
    Ok(Json(view))
}

/// The labelling queue: samples no one has labelled yet (every role), and
/// the intent names to pick from.
#[derive(Serialize)]
pub struct LabelQueue {
    pub samples: Vec<crate::store::samples::SampleRow>,
    pub intents: Vec<String>,
}

#[derive(Deserialize)]
pub struct QueueQuery {
    /// Only the samples of one conversation (offered when its chat closes).
    pub conversation: Option<String>,
}

async fn label_queue(
    State(s): S,
    headers: HeaderMap,
    Query(qq): Query<QueueQuery>,
) -> Result<Json<LabelQueue>, ConsoleError> {
    authorized(&s, &headers, Role::Agent, false).await?;
    let q = crate::store::samples::SampleQuery {
        unlabelled: true,
        limit: Some(50),
        conversation: qq.conversation,
        ..Default::default()
    };
    Ok(Json(LabelQueue {
        samples: s.store.samples(q).await?,
        intents: s.store.sample_intents().await?,
    }))
}

/// Answers supervisors wrote for intents the model learns (they ship with
/// the next trained model), and the `new:` intents people labelled.
#[derive(Serialize)]
pub struct AnswersView {
    pub answers: Vec<crate::store::trainings::IntentAnswer>,
    /// Intents labelled `new:NAME` that have no answer yet.
    pub unanswered: Vec<String>,
}

async fn list_answers(State(s): S, headers: HeaderMap) -> Result<Json<AnswersView>, ConsoleError> {
    authorized(&s, &headers, Role::Supervisor, false).await?;
    let answers = s.store.intent_answers().await?;
    let unanswered = s
        .store
        .sample_intents()
        .await?
        .into_iter()
        .filter_map(|l| l.strip_prefix("new:").map(str::to_owned))
        .filter(|i| !answers.iter().any(|a| &a.intent == i))
        .collect();
    Ok(Json(AnswersView {
        answers,
        unanswered,
    }))
}

#[derive(Deserialize)]
pub struct AnswerRequest {
    pub en: String,
    pub zh: String,
    #[serde(default)]
    pub quick_replies: crate::store::trainings::QuickReplies,
}

async fn put_answer(
    State(s): S,
    headers: HeaderMap,
    Path(intent): Path<String>,
    Json(req): Json<AnswerRequest>,
) -> Result<Json<crate::store::trainings::IntentAnswer>, ConsoleError> {
    let me = authorized(&s, &headers, Role::Supervisor, true).await?;
    let a = crate::training::intent_answer(&intent, &req.en, &req.zh, req.quick_replies, &me.id)
        .map_err(training_error)?;
    s.store.set_intent_answer(a.clone()).await?;
    Ok(Json(a))
}

async fn delete_answer(
    State(s): S,
    headers: HeaderMap,
    Path(intent): Path<String>,
) -> Result<StatusCode, ConsoleError> {
    authorized(&s, &headers, Role::Supervisor, true).await?;
    if s.store.delete_intent_answer(&intent).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ConsoleError::NotFound)
    }
}

/// Labels colleagues gave that this supervisor should review (a share of
/// them, `learning.review_fraction`), newest first.
async fn review_queue(
    State(s): S,
    headers: HeaderMap,
) -> Result<Json<Vec<ReviewItem>>, ConsoleError> {
    let me = authorized(&s, &headers, Role::Supervisor, false).await?;
    let fraction = s.review_fraction;
    let rows = s
        .store
        .review_queue(&me.id, 20, move |id| {
            crate::training::dataset::is_reviewed(id, fraction)
        })
        .await?;
    let names: std::collections::HashMap<String, String> = s
        .store
        .agents()
        .await?
        .into_iter()
        .map(|a| (a.id, a.display_name))
        .collect();
    Ok(Json(
        rows.into_iter()
            .map(|sample| ReviewItem {
                labelled_by_name: sample
                    .labelled_by
                    .as_ref()
                    .and_then(|id| names.get(id).cloned())
                    .unwrap_or_default(),
                sample,
            })
            .collect(),
    ))
}

/// A label to review, with who gave it.
#[derive(Serialize)]
pub struct ReviewItem {
    #[serde(flatten)]
    pub sample: crate::store::samples::SampleRow,
    pub labelled_by_name: String,
}

#[derive(Deserialize)]
pub struct ReviewRequest {
    /// Absent: the label is right. Present: what it should be instead.
    #[serde(default)]
    pub label: Option<String>,
}

/// A supervisor confirms a colleague's label or overrules it.
async fn review_sample(
    State(s): S,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(req): Json<ReviewRequest>,
) -> Result<Json<crate::store::samples::SampleRow>, ConsoleError> {
    let me = authorized(&s, &headers, Role::Supervisor, true).await?;
    let label = req.label.map(|l| l.trim().to_owned());
    if label.as_deref().is_some_and(|l| !valid_label(l)) {
        return Err(ConsoleError::BadRequest(LABEL_RULE.into()));
    }
    s.store
        .review_sample(&id, label, &me.id, now_ms())
        .await?
        .map(Json)
        .ok_or_else(|| ConsoleError::NotFoundWhy("no labelled sample with that id".into()))
}

/// The conversation around a sample, for whoever labels it (the lines were
/// masked on the branch like the sample). A bot-only conversation reaches
/// the controller when it ends.
async fn sample_conversation(
    State(s): S,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<ChatView>, ConsoleError> {
    authorized(&s, &headers, Role::Agent, false).await?;
    let sample = s.store.sample(&id).await?.ok_or(ConsoleError::NotFound)?;
    s.store
        .chat(&sample.conversation)
        .await?
        .map(Json)
        .ok_or_else(|| {
            ConsoleError::NotFoundWhy(
                "the conversation has not reached the controller yet: the branch sends it when it ends"
                    .into(),
            )
        })
}

#[derive(Deserialize)]
pub struct LabelRequest {
    /// An intent name (`card_arrival`), `out_of_scope` (not a banking
    /// question), or `new:NAME` for an intent the model does not have yet.
    pub label: String,
}

/// What a label may be, for the error that refuses one.
const LABEL_RULE: &str =
    "a label is an intent name (a-z 0-9 _), out_of_scope, or new:NAME for a new intent";

/// Whether `label` is an intent name, `out_of_scope`, or `new:NAME`: one a
/// training run can learn from.
pub fn valid_label(label: &str) -> bool {
    crate::training::dataset::intent_of(label).is_some()
}

async fn label_sample(
    State(s): S,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(req): Json<LabelRequest>,
) -> Result<Json<crate::store::samples::SampleRow>, ConsoleError> {
    let me = authorized(&s, &headers, Role::Agent, true).await?;
    let label = req.label.trim();
    if !valid_label(label) {
        return Err(ConsoleError::BadRequest(LABEL_RULE.into()));
    }
    let overrule = me.role >= Role::Supervisor;
    match s
        .store
        .label_sample(&id, label, &me.id, overrule, now_ms())
        .await?
    {
        None => Err(ConsoleError::NotFound),
        Some(Err(_)) => Err(ConsoleError::Forbidden(
            "a colleague labelled that one; a supervisor can overrule",
        )),
        Some(Ok(row)) => Ok(Json(row)),
    }
}

#[derive(Deserialize)]
pub struct ResolveRequest {
    pub note: String,
}

async fn resolve_ticket(
    State(s): S,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(req): Json<ResolveRequest>,
) -> Result<Json<Ticket>, ConsoleError> {
    let me = authorized(&s, &headers, Role::Agent, true).await?;
    let supervisor = me.role >= Role::Supervisor;
    let note: String = req.note.chars().take(2000).collect();
    let now = now_ms();
    let t = s
        .store
        .ticket_resolve(&id, &me.id, supervisor, &note, now)
        .await?
        .map_err(ticket_error)?;
    Ok(Json(t))
}

async fn list_canned(State(s): S, headers: HeaderMap) -> Result<Json<Vec<Canned>>, ConsoleError> {
    authorized(&s, &headers, Role::Agent, false).await?;
    Ok(Json(s.store.canned_list().await?))
}

async fn put_canned(
    State(s): S,
    headers: HeaderMap,
    Json(c): Json<Canned>,
) -> Result<Json<Canned>, ConsoleError> {
    authorized(&s, &headers, Role::Supervisor, true).await?;
    let shortcut_ok = !c.shortcut.is_empty()
        && c.shortcut.len() <= 32
        && c.shortcut
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b));
    if !shortcut_ok
        || !(c.lang == "en" || c.lang == "zh")
        || c.text.trim().is_empty()
        || c.text.len() > 2000
    {
        return Err(ConsoleError::BadRequest(
            "lang en|zh, shortcut 1-32 of a-z 0-9 _ -, text 1-2000 bytes".into(),
        ));
    }
    Ok(Json(s.store.canned_put(c).await?))
}

async fn delete_canned(
    State(s): S,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Result<StatusCode, ConsoleError> {
    authorized(&s, &headers, Role::Supervisor, true).await?;
    if s.store.canned_delete(id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ConsoleError::NotFound)
    }
}

#[derive(Serialize)]
pub struct Dashboard {
    pub live: crate::handoff::Live,
    pub nodes_online: usize,
    pub nodes_offline: usize,
    pub days: Vec<DayStats>,
    /// The newest model rollouts (with their shadow results).
    pub rollouts: Vec<crate::rollouts::RolloutView>,
}

/// Rollouts the dashboard lists.
const DASHBOARD_ROLLOUTS: usize = 5;

/// Supervisors: agents and their load, the queue, the fleet, the newest
/// model rollouts, and 30 days of first-response time and satisfaction.
async fn dashboard(State(s): S, headers: HeaderMap) -> Result<Json<Dashboard>, ConsoleError> {
    authorized(&s, &headers, Role::Supervisor, false).await?;
    let now = now_ms();
    let live = s.handoff.snapshot().await;
    let nodes = s.store.nodes().await?;
    let days = s.store.daily_stats(now - 30 * 86_400_000).await?;
    let online = nodes
        .iter()
        .filter(|n| n.online && n.revoked_at.is_none())
        .count();
    let mut rollouts = s.rollouts.list().await?;
    rollouts.truncate(DASHBOARD_ROLLOUTS);
    Ok(Json(Dashboard {
        live,
        nodes_online: online,
        nodes_offline: nodes.iter().filter(|n| n.revoked_at.is_none()).count() - online,
        days,
        rollouts,
    }))
}

#[derive(Serialize)]
pub struct Colleague {
    pub id: String,
    pub name: String,
    pub presence: String,
    pub free: usize,
}

/// Colleagues a chat can be transferred to (every role): who is online and
/// how many more chats each can take.
async fn colleagues(State(s): S, headers: HeaderMap) -> Result<Json<Vec<Colleague>>, ConsoleError> {
    let me = authorized(&s, &headers, Role::Agent, false).await?;
    let live = s.handoff.snapshot().await;
    Ok(Json(
        live.agents
            .into_iter()
            .filter(|a| a.id != me.id && a.presence == "online" && a.connected)
            .map(|a| Colleague {
                free: a.capacity.saturating_sub(a.chats),
                id: a.id,
                name: a.name,
                presence: a.presence,
            })
            .collect(),
    ))
}

fn training_error(e: crate::training::TrainingError) -> ConsoleError {
    use crate::training::TrainingError as E;
    match e {
        e @ (E::Busy(_) | E::NotAwaiting(..) | E::Conflict(_)) => {
            ConsoleError::Conflict(e.to_string())
        }
        e @ E::NotFound(_) => ConsoleError::NotFoundWhy(e.to_string()),
        E::Invalid(m) => ConsoleError::BadRequest(m),
        E::Rollout(e) => ConsoleError::BadRequest(e.to_string()),
        E::Store(e) => e.into(),
    }
}

/// The learning loop's training runs, newest first (supervisors).
async fn list_trainings(
    State(s): S,
    headers: HeaderMap,
) -> Result<Json<Vec<crate::store::trainings::TrainingRow>>, ConsoleError> {
    authorized(&s, &headers, Role::Supervisor, false).await?;
    Ok(Json(s.store.trainings(10).await?))
}

/// A supervisor starts a training run on the labels given so far.
async fn start_training(
    State(s): S,
    headers: HeaderMap,
) -> Result<(StatusCode, Json<crate::store::trainings::TrainingRow>), ConsoleError> {
    let me = authorized(&s, &headers, Role::Supervisor, true).await?;
    let t = s
        .trainings
        .start(Default::default(), &me.id)
        .await
        .map_err(training_error)?;
    Ok((StatusCode::ACCEPTED, Json(t)))
}

/// A supervisor approves a run that passed the gate: its rollout starts
/// with the configured settings (shadow first).
async fn approve_training(
    State(s): S,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<crate::store::trainings::TrainingRow>, ConsoleError> {
    let me = authorized(&s, &headers, Role::Supervisor, true).await?;
    let t = s
        .trainings
        .approve(&id, serde_json::Value::Null, &me.id)
        .await
        .map_err(training_error)?;
    Ok(Json(t))
}

/// A supervisor releases the answers to the fleet (a knowledge-base release).
async fn release_answers(
    State(s): S,
    headers: HeaderMap,
) -> Result<Json<crate::store::trainings::TrainingRow>, ConsoleError> {
    let me = authorized(&s, &headers, Role::Supervisor, true).await?;
    let t = s
        .trainings
        .release_answers(&me.id)
        .await
        .map_err(training_error)?;
    Ok(Json(t))
}

/// Suggested intents (supervisors): the unlabelled questions grouped.
async fn list_suggestions(
    State(s): S,
    headers: HeaderMap,
) -> Result<Json<crate::training::suggest::Suggestions>, ConsoleError> {
    authorized(&s, &headers, Role::Supervisor, false).await?;
    Ok(Json(
        s.trainings.suggestions().await.map_err(training_error)?,
    ))
}

async fn group_questions(
    State(s): S,
    headers: HeaderMap,
) -> Result<Json<crate::training::suggest::GroupingStatus>, ConsoleError> {
    let me = authorized(&s, &headers, Role::Supervisor, true).await?;
    let st = s
        .trainings
        .group_questions(&me.id)
        .await
        .map_err(training_error)?;
    Ok(Json(st))
}

async fn accept_suggestion(
    State(s): S,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(req): Json<crate::training::suggest::AcceptSuggestion>,
) -> Result<Json<crate::training::suggest::Accepted>, ConsoleError> {
    let me = authorized(&s, &headers, Role::Supervisor, true).await?;
    let a = s
        .trainings
        .accept_suggestion(&id, req, &me.id)
        .await
        .map_err(training_error)?;
    Ok(Json(a))
}

async fn dismiss_suggestion(
    State(s): S,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<crate::training::suggest::SuggestionView>, ConsoleError> {
    let me = authorized(&s, &headers, Role::Supervisor, true).await?;
    let v = s
        .trainings
        .dismiss_suggestion(&id, &me.id)
        .await
        .map_err(training_error)?;
    Ok(Json(v))
}

pub fn router(state: Arc<Http>) -> axum::Router {
    axum::Router::new()
        .route("/console/api/login", post(login))
        .route("/console/api/logout", post(logout))
        .route("/console/api/me", get(me))
        .route("/console/api/agents", get(list_agents).post(create_agent))
        .route("/console/api/agents/{id}/disable", post(disable_agent))
        .route("/console/api/agents/{id}/role", post(set_role))
        .route("/console/ws", get(console_ws))
        .route("/console/api/chats", get(list_chats))
        .route("/console/api/chats/{id}", get(get_chat))
        .route("/console/api/tickets", get(list_tickets))
        .route("/console/api/dashboard", get(dashboard))
        .route("/console/api/samples", get(label_queue))
        .route("/console/api/samples/{id}/label", post(label_sample))
        .route(
            "/console/api/samples/{id}/conversation",
            get(sample_conversation),
        )
        .route("/console/api/review", get(review_queue))
        .route("/console/api/answers", get(list_answers))
        .route(
            "/console/api/answers/{intent}",
            axum::routing::put(put_answer).delete(delete_answer),
        )
        .route("/console/api/samples/{id}/review", post(review_sample))
        .route(
            "/console/api/trainings",
            get(list_trainings).post(start_training),
        )
        .route(
            "/console/api/trainings/{id}/approve",
            post(approve_training),
        )
        .route("/console/api/kb/releases", post(release_answers))
        .route("/console/api/suggestions", get(list_suggestions))
        .route("/console/api/suggestions/refresh", post(group_questions))
        .route(
            "/console/api/suggestions/{id}/accept",
            post(accept_suggestion),
        )
        .route(
            "/console/api/suggestions/{id}/dismiss",
            post(dismiss_suggestion),
        )
        .route("/console/api/colleagues", get(colleagues))
        .route("/console/api/tickets/{id}/claim", post(claim_ticket))
        .route("/console/api/tickets/{id}/resolve", post(resolve_ticket))
        .route(
            "/console/api/tickets/{id}/transcript",
            get(ticket_transcript),
        )
        .route("/console/api/canned", get(list_canned).post(put_canned))
        .route(
            "/console/api/canned/{id}",
            axum::routing::delete(delete_canned),
        )
        .route(
            "/console",
            get(|| async { asset("text/html; charset=utf-8", PAGE) }),
        )
        .route(
            "/console/console.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/console/console.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
        .with_state(state)
}
