//! Bodies of the edge↔cloud sync protocol (inside sealed envelopes) and the
//! enrolment exchange (over HTTPS/REST, before a node has credentials).
//!
//! Up (node → controller): `hello` after each MQTT connect, `heartbeat`,
//! `events` (a batch from the outbox), `command_ack`, and the `will` the
//! broker publishes when the node vanishes. Down: `events_ack` (these ids are
//! stored; delete them) and `command`. Both ends delete or retire an item only
//! after the other's application-level acknowledgement.

use serde::{Deserialize, Serialize};

use crate::envelope::PublicKeys;
use crate::event::Event;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Up {
    Hello {
        connect_id: String,
        sw_version: String,
    },
    Heartbeat(Heartbeat),
    Events {
        events: Vec<Event>,
    },
    CommandAck {
        id: String,
        ok: bool,
        detail: String,
    },
    /// Set as the MQTT last will at connect; refers to that connection only.
    Will {
        connect_id: String,
    },
    /// The visitor is typing in a chat held by an agent (ephemeral).
    Typing {
        conversation: String,
    },
    /// The node saw a gap in a command stream: send the pending commands again.
    ResendCommands,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Heartbeat {
    pub connect_id: String,
    pub sw_version: String,
    pub model_name: String,
    pub model_version: String,
    pub uptime_s: u64,
    pub open_sessions: u64,
    pub outbox_depth: u64,
    /// Routine summaries dropped to stay within the outbox disk budget, ever.
    pub outbox_compacted: u64,
    pub free_disk_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Down {
    /// These event ids are durably stored by the controller.
    EventsAck {
        ids: Vec<String>,
    },
    Command(Command),
    /// The agent is typing (ephemeral, not queued).
    Typing {
        conversation: String,
    },
}

/// Command kinds for the live handoff, with their `args`.
pub mod command {
    use serde::{Deserialize, Serialize};

    /// An agent took the chat: [`AgentJoined`].
    pub const AGENT_JOINED: &str = "agent_joined";
    /// An agent's line: [`AgentMessage`].
    pub const AGENT_MESSAGE: &str = "agent_message";
    /// The agent handed the chat back to the queue: [`AgentLeft`].
    pub const AGENT_LEFT: &str = "agent_left";
    /// The agent closed the chat: [`AgentClosed`].
    pub const AGENT_CLOSED: &str = "agent_closed";

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct AgentJoined {
        pub conversation: String,
        pub agent_name: String,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct AgentMessage {
        pub conversation: String,
        pub agent_name: String,
        pub text: String,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct AgentLeft {
        pub conversation: String,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct AgentClosed {
        pub conversation: String,
    }
}

/// An instruction for a node, kept queued on the controller until acknowledged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    pub id: String,
    /// e.g. `ping`; later issues add agent and model commands.
    pub kind: String,
    #[serde(default)]
    pub args: serde_json::Value,
    pub issued_at: i64,
    /// Commands of one stream (e.g. one conversation's agent lines) are
    /// executed in `seq` order: a node that sees a gap holds back and asks
    /// for the pending commands again, so a command lost in flight and resent
    /// later cannot overtake a newer one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<Stream>,
}

/// A command's place in its stream; `seq` starts at 1 for each key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stream {
    pub key: String,
    pub seq: u64,
}

/// `POST /api/v1/enroll`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrollRequest {
    /// One-time token issued by the operator.
    pub token: String,
    pub node_id: String,
    pub keys: PublicKeys,
    /// Signature with the node's new signing key over [`enroll_proof_message`].
    pub proof: String,
    #[serde(default)]
    pub sw_version: String,
}

/// What a node signs to prove it holds the key it enrols.
pub fn enroll_proof_message(node_id: &str, token: &str) -> Vec<u8> {
    format!("edgedesk-enroll\x1f{node_id}\x1f{token}").into_bytes()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrollResponse {
    pub node_id: String,
    /// The controller's keys; the node pins them.
    pub controller: PublicKeys,
    pub mqtt: MqttEndpoint,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MqttEndpoint {
    pub host: String,
    pub port: u16,
    /// Connect with TLS; `ca_pem` is the certificate to trust when present.
    pub tls: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    pub username: String,
    pub password: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_tagged() {
        let up = Up::Hello {
            connect_id: "c".into(),
            sw_version: "1".into(),
        };
        let s = serde_json::to_string(&up).unwrap();
        assert!(s.contains(r#""type":"hello""#), "{s}");
        assert_eq!(serde_json::from_str::<Up>(&s).unwrap(), up);
        let down = Down::EventsAck {
            ids: vec!["a".into()],
        };
        let s = serde_json::to_string(&down).unwrap();
        assert_eq!(serde_json::from_str::<Down>(&s).unwrap(), down);
    }
}
