//! The chat WebSocket transport: one task per visitor connection.
//!
//! Order of checks per frame: rate limit → size → JSON → type → content;
//! what a frame means is the session service's business ([`Sessions`]).
//! Every rejection is an `error` frame with a code; the connection stays up,
//! except for a sustained flood (1008), an unsupported protocol version (1002),
//! shutdown (1001) and a session taken over by a newer connection (4001).
//! Writes have a deadline: a visitor who stops reading is dropped (the
//! session is kept), so nothing waiting to reach them waits for long.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use edgedesk_common::chat::{
    ClientFrame, ErrorCode, PROTOCOL_VERSION, ServerFrame, probe_client_id,
};
use futures_util::SinkExt;
use tokio::sync::mpsc;
use tracing::Instrument;

use super::AppState;
use crate::session::{Active, AgentEvent};

/// WebSocket close codes used by the node.
pub mod close {
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL: u16 = 1002;
    /// A text frame that is not UTF-8.
    pub const INVALID_DATA: u16 = 1007;
    pub const POLICY: u16 = 1008;
    /// A message over the hard size cap.
    pub const TOO_BIG: u16 = 1009;
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// The session was resumed by another connection.
    pub const TAKEN_OVER: u16 = 4001;
}

/// Longest a write to a visitor may take before the connection is dropped.
const WRITE_DEADLINE: Duration = Duration::from_secs(5);

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
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    State(app): State<Arc<AppState>>,
) -> Response {
    if !origin_allowed(&headers, &app.server.allowed_origins) {
        app.metrics.reject("origin");
        let origin = headers
            .get(header::ORIGIN)
            .map(|o| edgedesk_support::logging::clip(&String::from_utf8_lossy(o.as_bytes())));
        tracing::warn!(?origin, "WebSocket refused: origin not allowed");
        return (StatusCode::FORBIDDEN, "origin not allowed\n").into_response();
    }
    if app.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    let permit = app.connections.clone().try_acquire_owned();
    // Frames above our own limit still get a polite `too_large` error; only far
    // larger ones are cut off by the WebSocket layer itself.
    let hard_cap = (app.server.max_frame_bytes * 4).max(16 * 1024);
    let tasks = app.tasks.clone();
    // Design: small per-connection buffers. tungstenite's defaults (128 KiB
    // each way) cost ~256 KiB per idle kiosk; chat frames are a few hundred
    // bytes. A turn's frames (ack and replies) gather in a small write buffer
    // and leave in one write at the flush.
    ws.max_message_size(hard_cap)
        .max_frame_size(hard_cap)
        .read_buffer_size(1024)
        .write_buffer_size(8 * 1024)
        .max_write_buffer_size(hard_cap.max(64 * 1024))
        .on_upgrade(move |mut socket| {
            tasks.track_future(async move {
                match permit {
                    Ok(_permit) => Connection::new(app, peer.ip()).run(socket).await,
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

/// How many addresses the hello limiter remembers before it forgets idle ones.
const HELLO_ADDRESSES: usize = 10_000;

/// New sessions per client address (`server.hellos_per_minute_per_address`,
/// the same number as a burst): every `hello` takes a token from its
/// address's bucket, so a script cannot make the node create (and fsync)
/// sessions as fast as it can send. Over the limit the socket is closed with
/// 1013 (try again later).
pub struct HelloLimiter {
    per_minute: f64,
    buckets: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, Bucket>>,
}

impl HelloLimiter {
    pub fn new(per_minute: u32) -> HelloLimiter {
        HelloLimiter {
            per_minute: per_minute as f64,
            buckets: Default::default(),
        }
    }

    fn allow(&self, ip: std::net::IpAddr) -> bool {
        let mut map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= HELLO_ADDRESSES {
            // Forget addresses whose bucket has refilled: they lose nothing.
            let now = Instant::now();
            map.retain(|_, b| {
                b.tokens + now.duration_since(b.last).as_secs_f64() * b.rate < b.burst
            });
        }
        let burst = self.per_minute;
        map.entry(ip)
            .or_insert_with(|| Bucket {
                tokens: burst,
                rate: burst / 60.0,
                burst,
                last: Instant::now(),
            })
            .take()
    }
}

enum Flow {
    Continue,
    Close(u16, &'static str),
}

/// What woke a connection up.
enum Wake {
    Shutdown,
    TakenOver,
    Idle,
    /// A waiting visitor has waited long enough to be offered a message instead.
    Offer,
    /// The connection has not said hello in time.
    NoHello,
    Agent(Option<Box<AgentEvent>>),
    Socket(Option<Result<Message, axum::Error>>),
}

struct Connection {
    app: Arc<AppState>,
    /// The client's address (for the per-address hello limit).
    peer: std::net::IpAddr,
    bucket: Bucket,
    violations: u32,
    session: Option<Active>,
    /// When the socket opened: a `hello` must come within
    /// `server.hello_deadline_secs`, or the socket is closed.
    opened: tokio::time::Instant,
    last_activity: tokio::time::Instant,
    /// Agent actions for the held session.
    agent_rx: Option<mpsc::Receiver<Box<AgentEvent>>>,
}

async fn recv_agent(rx: &mut Option<mpsc::Receiver<Box<AgentEvent>>>) -> Option<Box<AgentEvent>> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Write `frames` with one flush; `false` if the visitor is gone or too slow.
async fn write(socket: &mut WebSocket, frames: Vec<ServerFrame>) -> bool {
    if frames.is_empty() {
        return true;
    }
    let sent = tokio::time::timeout(WRITE_DEADLINE, async {
        for f in frames {
            socket
                .feed(Message::Text(Utf8Bytes::from(f.to_json())))
                .await?;
        }
        socket.flush().await
    })
    .await;
    matches!(sent, Ok(Ok(())))
}

impl Connection {
    fn new(app: Arc<AppState>, peer: std::net::IpAddr) -> Connection {
        let s = &app.server;
        let bucket = Bucket {
            tokens: s.rate_limit_burst as f64,
            rate: s.rate_limit_per_sec,
            burst: s.rate_limit_burst as f64,
            last: Instant::now(),
        };
        Connection {
            app,
            peer,
            bucket,
            violations: 0,
            session: None,
            opened: tokio::time::Instant::now(),
            last_activity: tokio::time::Instant::now(),
            agent_rx: None,
        }
    }

    async fn run(mut self, mut socket: WebSocket) {
        self.app.metrics.connections.inc();
        let idle = self.app.idle_conversation;
        let shutdown = self.app.shutdown.clone();
        let end = loop {
            let taken_over = self.session.as_ref().map(|s| s.claim().token.clone());
            let conversation_open = self.session.as_ref().is_some_and(Active::is_open);
            let idle_deadline = self.last_activity + idle;
            let hello_deadline =
                self.opened + Duration::from_secs(u64::from(self.app.server.hello_deadline_secs));
            let greeted = self.session.is_some();
            let offer_deadline = self
                .session
                .as_ref()
                .and_then(|a| self.app.sessions.offer_deadline(a));
            // Wait for the next thing to do; handle it once the borrows of the
            // wait are over.
            let wake = {
                let agent_rx = &mut self.agent_rx;
                tokio::select! {
                    _ = shutdown.cancelled() => Wake::Shutdown,
                    _ = async { taken_over.unwrap().cancelled().await }, if taken_over.is_some() => Wake::TakenOver,
                    _ = tokio::time::sleep_until(idle_deadline), if conversation_open => Wake::Idle,
                    _ = tokio::time::sleep_until(hello_deadline), if !greeted => Wake::NoHello,
                    _ = async { tokio::time::sleep_until(offer_deadline.unwrap()).await }, if offer_deadline.is_some() => Wake::Offer,
                    ev = recv_agent(agent_rx) => Wake::Agent(ev),
                    msg = socket.recv() => Wake::Socket(msg),
                }
            };
            let frames = match wake {
                Wake::Shutdown => break Some((close::GOING_AWAY, "server shutting down")),
                Wake::NoHello => {
                    self.app.metrics.reject("no_hello");
                    break Some((close::POLICY, "no hello in time"));
                }
                Wake::TakenOver => {
                    let notice = ServerFrame::Notice {
                        code: "session_taken_over".into(),
                        text: "This chat was opened in another window.".into(),
                    };
                    let _ = write(&mut socket, vec![notice]).await;
                    break Some((close::TAKEN_OVER, "session resumed elsewhere"));
                }
                Wake::Idle => {
                    self.last_activity = tokio::time::Instant::now();
                    match self.session.as_mut() {
                        Some(a) => Box::pin(self.app.sessions.end_idle(a))
                            .await
                            .into_iter()
                            .collect(),
                        None => Vec::new(),
                    }
                }
                Wake::Offer => match self.session.as_mut() {
                    Some(a) => Box::pin(self.app.sessions.offer_message(a)).await,
                    None => Vec::new(),
                },
                Wake::Agent(Some(ev)) => {
                    let span = edgedesk_support::traced_span!(
                        "edge.deliver",
                        ev.trace.as_deref(),
                        chat = %ev.conversation
                    );
                    self.app
                        .sessions
                        .agent_event(self.session.as_mut(), ev)
                        .instrument(span)
                        .await
                }
                Wake::Agent(None) => {
                    self.agent_rx = None;
                    Vec::new()
                }
                Wake::Socket(msg) => match msg {
                    None | Some(Ok(Message::Close(_))) => break None,
                    Some(Err(e)) => {
                        // Invalid UTF-8, oversized or malformed frames end
                        // here, with the close code RFC 6455 names for each.
                        tracing::debug!(error = %e, "WebSocket protocol error");
                        self.app.metrics.reject("protocol");
                        break Some(protocol_close(&e.to_string()));
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => Vec::new(),
                    // Boxed: the turn's state lives on the heap only while a
                    // frame is being handled, so an idle connection stays small.
                    Some(Ok(other)) => match Box::pin(self.frame(other)).await {
                        (frames, Flow::Continue) => frames,
                        (frames, Flow::Close(code, reason)) => {
                            let _ = write(&mut socket, frames).await;
                            break Some((code, reason));
                        }
                    },
                },
            };
            if !write(&mut socket, frames).await {
                self.app.metrics.reject("slow_reader");
                break None;
            }
        };
        if let Some((code, reason)) = end {
            let _ = tokio::time::timeout(
                WRITE_DEADLINE,
                socket.send(Message::Close(Some(CloseFrame {
                    code,
                    reason: Utf8Bytes::from_static(reason),
                }))),
            )
            .await;
        }
        if let Some(active) = &self.session {
            self.app.sessions.release(active);
        }
        self.app.metrics.connections.dec();
    }

    fn error(&self, code: ErrorCode, message: impl Into<String>) -> ServerFrame {
        self.app.metrics.reject(code.as_str());
        ServerFrame::Error {
            code,
            message: message.into(),
            client_id: None,
        }
    }

    /// Handle one frame; an error about a message names its `client_id`.
    async fn frame(&mut self, msg: Message) -> (Vec<ServerFrame>, Flow) {
        let about = match &msg {
            Message::Text(t) if t.len() <= self.app.server.max_frame_bytes => {
                probe_client_id(t.as_str())
            }
            _ => None,
        };
        let (mut frames, flow) = self.handle(msg).await;
        if let Some(id) = about {
            for f in &mut frames {
                if let ServerFrame::Error { client_id, .. } = f {
                    client_id.get_or_insert_with(|| id.clone());
                }
            }
        }
        (frames, flow)
    }

    async fn handle(&mut self, msg: Message) -> (Vec<ServerFrame>, Flow) {
        if !self.bucket.take() {
            self.violations += 1;
            if self.violations >= self.app.server.rate_limit_close_after {
                self.app.metrics.reject("flood");
                return (
                    Vec::new(),
                    Flow::Close(close::POLICY, "rate limit exceeded"),
                );
            }
            let e = self.error(ErrorCode::RateLimited, "too many messages; slow down");
            return (vec![e], Flow::Continue);
        }
        let text = match msg {
            Message::Text(t) => t,
            _ => {
                let e = self.error(
                    ErrorCode::BinaryNotSupported,
                    "binary frames are not supported; send JSON text",
                );
                return (vec![e], Flow::Continue);
            }
        };
        let limit = self.app.server.max_frame_bytes;
        if text.len() > limit {
            let e = self.error(
                ErrorCode::TooLarge,
                format!(
                    "frame of {} bytes exceeds the {limit}-byte limit",
                    text.len()
                ),
            );
            return (vec![e], Flow::Continue);
        }
        let frame = match ClientFrame::decode(text.as_str()) {
            Ok(f) => f,
            Err(e) => return (vec![self.error(e.code(), e.to_string())], Flow::Continue),
        };
        let sessions = &self.app.sessions;
        let frames = match frame {
            ClientFrame::Hello { v, session, lang } => {
                if v != PROTOCOL_VERSION {
                    let e = self.error(
                        ErrorCode::UnsupportedVersion,
                        format!("protocol version {v} is not supported; this node speaks {PROTOCOL_VERSION}"),
                    );
                    return (
                        vec![e],
                        Flow::Close(close::PROTOCOL, "unsupported protocol version"),
                    );
                }
                if !self.app.hellos.allow(self.peer) {
                    let e = self.error(
                        ErrorCode::RateLimited,
                        "too many new sessions from this address; try again in a minute",
                    );
                    return (
                        vec![e],
                        Flow::Close(close::TRY_AGAIN_LATER, "too many new sessions"),
                    );
                }
                if let Some(old) = self.session.take() {
                    sessions.release(&old);
                }
                let hello = sessions.hello(session, lang).await;
                if let Some((active, rx)) = hello.session {
                    self.session = Some(active);
                    self.agent_rx = Some(rx);
                }
                hello.frames
            }
            ClientFrame::Message {
                text,
                client_id,
                payload,
                traceparent,
            } => {
                let Some(active) = self.session.as_mut() else {
                    let e = self.error(ErrorCode::HelloRequired, "send a hello frame first");
                    return (vec![e], Flow::Continue);
                };
                let trimmed = text.trim();
                if trimmed.is_empty() {
                    let e = self.error(ErrorCode::EmptyMessage, "message is empty");
                    return (vec![e], Flow::Continue);
                }
                self.last_activity = tokio::time::Instant::now();
                let text = if trimmed.len() == text.len() {
                    text
                } else {
                    trimmed.to_owned()
                };
                // The turn's span: a child of the page's trace context when
                // it sent a valid one; its events and replies carry it on.
                let span = edgedesk_support::traced_span!("kiosk.turn", traceparent.as_deref());
                sessions
                    .turn(active, text, client_id, payload)
                    .instrument(span)
                    .await
            }
            ClientFrame::SetLang { lang } => match self.session.as_mut() {
                Some(active) => sessions.set_lang(active, lang).await,
                None => Vec::new(),
            },
            ClientFrame::Typing => {
                if let Some(active) = &self.session {
                    sessions.typing(active);
                }
                Vec::new()
            }
            ClientFrame::Ping => vec![ServerFrame::Pong],
        };
        (frames, Flow::Continue)
    }
}

/// The close code and reason for a WebSocket protocol error, by what the
/// WebSocket layer reported: 1009 for a message over the size cap, 1007 for
/// text that is not UTF-8, 1002 for anything else.
fn protocol_close(error: &str) -> (u16, &'static str) {
    if error.contains("Space limit exceeded") || error.contains("too long") {
        (close::TOO_BIG, "message too big")
    } else if error.contains("UTF-8") || error.contains("utf-8") {
        (close::INVALID_DATA, "invalid UTF-8 in a text frame")
    } else {
        (close::PROTOCOL, "WebSocket protocol error")
    }
}
