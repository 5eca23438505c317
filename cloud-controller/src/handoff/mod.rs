//! Live handoff on the controller: escalations from node outboxes feed the
//! routing state machine; its assignments become `agent_joined` commands to
//! the node and `assigned` frames on the agent's console WebSocket; lines
//! travel both ways (agent → command queue → node; visitor → outbox event →
//! agent), so nothing either side types is lost when a branch link drops.
//!
//! - [`desk`]: one pure step decides everything ([`Desk::step`]).
//! - [`driver`]: one task owns the desk and does what it says (store, queue
//!   commands through the [`Downlink`](crate::downlink::Downlink), push to
//!   consoles). Everyone else talks to it through [`Handoff`], a channel —
//!   the link never calls into here and this module never sees the transport.

pub mod desk;
pub mod driver;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::store::{AgentRow, ChatView, Line};
pub use desk::{Desk, Do, In};

/// Frames to an agent's console.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ConsoleOut {
    /// A chat is now yours (with the whole conversation so far).
    Assigned {
        chat: Box<ChatView>,
    },
    Line {
        chat: String,
        line: Line,
    },
    /// The chat left you (transfer, or you went offline).
    Requeued {
        chat: String,
    },
    /// The chat is over; `reason` says why when it was not you who closed it.
    Closed {
        chat: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// The visitor's page closed (`present: false`) or opened again.
    Visitor {
        chat: String,
        present: bool,
    },
    /// The line the console sent as `client_id` is stored and on its way.
    Ack {
        client_id: String,
    },
    Typing {
        chat: String,
    },
    /// A branch with one of your chats went offline or came back.
    NodeStatus {
        node: String,
        online: bool,
    },
    /// A frame was refused; `client_id` names the line that was not sent.
    Error {
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_id: Option<String>,
    },
}

/// Frames from an agent's console.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ConsoleIn {
    Presence {
        state: String,
    },
    /// A line for the visitor. `client_id`: the console's id for it, so a
    /// line sent again after a reconnect is delivered once, and the answer
    /// (`ack` or `error`) names it.
    Message {
        chat: String,
        text: String,
        #[serde(default)]
        client_id: Option<String>,
    },
    Typing {
        chat: String,
    },
    Close {
        chat: String,
        resolution: String,
    },
    Transfer {
        chat: String,
        to: Option<String>,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentLoad {
    pub id: String,
    pub name: String,
    pub presence: String,
    /// False while the console is in the reconnect grace.
    pub connected: bool,
    pub chats: usize,
    pub capacity: usize,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Live {
    pub agents: Vec<AgentLoad>,
    /// Waiting chats whose visitor is there.
    pub waiting: usize,
    /// Waiting chats whose visitor closed the page (parked).
    pub waiting_away: usize,
    pub longest_wait_ms: i64,
}

/// Longest line an agent may send.
pub const MAX_LINE: usize = 2000;

/// A message for the desk's task.
pub enum Msg {
    Input(In),
    /// An input that continues a trace (W3C `traceparent`): the desk's
    /// routing and the console pushes it causes become spans of that trace.
    Traced {
        input: In,
        trace: String,
    },
    /// A console frame; the answer comes back on `reply`.
    Console {
        agent: AgentRow,
        frame: ConsoleIn,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// A console socket opened for `agent`.
    Connect {
        agent: AgentRow,
        tx: mpsc::Sender<ConsoleOut>,
    },
    /// A console socket closed.
    Disconnect {
        agent: String,
        tx: mpsc::Sender<ConsoleOut>,
    },
    Snapshot(oneshot::Sender<Live>),
}

/// Capacity of the desk's queue. Policy: senders of events wait (an
/// escalation is never dropped); ephemeral typing signals are dropped and
/// counted when it is full.
pub const QUEUE: usize = 4096;

/// Handle on the desk's task; cheap to clone.
#[derive(Clone)]
pub struct Handoff {
    tx: mpsc::Sender<Msg>,
}

impl Handoff {
    pub fn new(tx: mpsc::Sender<Msg>) -> Handoff {
        Handoff { tx }
    }

    /// Feed an input; waits when the desk is behind.
    pub async fn input(&self, input: In) {
        let _ = self.tx.send(Msg::Input(input)).await;
    }

    /// [`Handoff::input`], continuing the trace in `trace` when there is one.
    pub async fn input_traced(&self, input: In, trace: Option<String>) {
        let msg = match trace {
            Some(trace) => Msg::Traced { input, trace },
            None => Msg::Input(input),
        };
        let _ = self.tx.send(msg).await;
    }

    /// Feed an ephemeral input; `false` if it was dropped.
    pub fn try_input(&self, input: In) -> bool {
        self.tx.try_send(Msg::Input(input)).is_ok()
    }

    pub async fn console(&self, agent: AgentRow, frame: ConsoleIn) -> Result<(), String> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Msg::Console {
                agent,
                frame,
                reply,
            })
            .await
            .map_err(|_| "the controller is shutting down".to_owned())?;
        answer
            .await
            .map_err(|_| "the controller is shutting down".to_owned())?
    }

    pub async fn connect(&self, agent: AgentRow, tx: mpsc::Sender<ConsoleOut>) {
        let _ = self.tx.send(Msg::Connect { agent, tx }).await;
    }

    pub async fn disconnect(&self, agent: &str, tx: mpsc::Sender<ConsoleOut>) {
        let _ = self
            .tx
            .send(Msg::Disconnect {
                agent: agent.to_owned(),
                tx,
            })
            .await;
    }

    /// Live numbers for the supervisor dashboard.
    pub async fn snapshot(&self) -> Live {
        let (reply, answer) = oneshot::channel();
        if self.tx.send(Msg::Snapshot(reply)).await.is_err() {
            return Live::default();
        }
        answer.await.unwrap_or_default()
    }
}
