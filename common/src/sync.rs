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
        /// The node's current sealing key (base64): seal for it from now on.
        seal_key: String,
    },
    Heartbeat(Box<Heartbeat>),
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
    /// The node's current sealing key (base64), repeated so a rotation is
    /// learnt even if the message announcing it was lost.
    #[serde(default)]
    pub seal_key: String,
    pub sw_version: String,
    pub model_name: String,
    pub model_version: String,
    pub uptime_s: u64,
    pub open_sessions: u64,
    pub outbox_depth: u64,
    /// Routine summaries dropped to stay within the outbox disk budget, ever.
    pub outbox_compacted: u64,
    pub free_disk_bytes: u64,
    /// Post-swap watch: low-confidence rate of the active model since it
    /// became active, and of the model before it (its last window).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_health: Option<ModelHealth>,
    /// A candidate model running in shadow beside the active one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowReport>,
}

/// What a candidate model in shadow mode did on live turns, counted since
/// it started (it answers nobody): how often it agreed with the active
/// model, and what it cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ShadowReport {
    pub rollout: String,
    pub version: String,
    /// Turns both models classified.
    pub turns: u64,
    /// Turns where both gave the same intent.
    pub agreed: u64,
    /// Turns where one would answer and the other would not (out of scope
    /// or below its threshold).
    pub oos_disagreements: u64,
    /// Sum over turns of the candidate's confidence minus the active one's.
    pub confidence_delta_sum: f64,
    /// Microseconds spent classifying those turns, by each model.
    pub active_us: u64,
    pub candidate_us: u64,
    /// Turns not compared because the node was busy (shadow work yields).
    pub skipped: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ModelHealth {
    pub version: String,
    pub previous_version: String,
    /// Visitor turns classified by the active model, and the share below threshold.
    pub turns: u64,
    pub low_confidence_rate: f64,
    /// Share of those turns that escalated to a person.
    #[serde(default)]
    pub escalation_rate: f64,
    pub previous_turns: u64,
    pub previous_low_confidence_rate: f64,
    #[serde(default)]
    pub previous_escalation_rate: f64,
    /// Versions kept on disk, newest first.
    #[serde(default)]
    pub kept: Vec<String>,
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
    /// The controller's current sealing key (base64): the node sealed for
    /// an older one. Seal for this from now on.
    SealKey {
        key: String,
    },
    /// Where a waiting visitor stands in the queue (ephemeral, sent when it
    /// changes); `position` 1 is next.
    QueueStatus {
        conversation: String,
        position: u32,
        agents_online: u32,
    },
}

/// What a node is asked to do. On the wire `{"kind": "...", "args": {...}}`
/// beside the command's id (`args` is absent for `ping`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "args", rename_all = "snake_case")]
pub enum CommandBody {
    /// Answer `pong` (operators check a node's command path).
    Ping,
    /// An agent took the chat.
    AgentJoined(AgentJoined),
    /// An agent's line for the visitor.
    AgentMessage(AgentMessage),
    /// The agent handed the chat back to the queue.
    AgentLeft(AgentLeft),
    /// The agent closed the chat.
    AgentClosed(AgentClosed),
    /// Download, verify, test and activate a release.
    ModelUpdate(ModelUpdate),
    /// Go back to an earlier version kept on the node.
    ModelRollback(ModelRollback),
    /// Replace the branch's hours and facts (kept by the node, used at once).
    SetBranch(crate::branch::BranchInfo),
    /// Download, verify and test a release, then run it in shadow beside
    /// the active model for `for_secs` (it answers nobody).
    ModelShadow(ModelShadow),
    /// Stop the shadow run of `rollout` now (its rollout was aborted).
    ModelShadowEnd(ModelShadowEnd),
}

impl CommandBody {
    /// Every kind this build understands.
    pub const KINDS: &'static [&'static str] = &[
        "ping",
        "agent_joined",
        "agent_message",
        "agent_left",
        "agent_closed",
        "model_update",
        "model_rollback",
        "set_branch",
        "model_shadow",
        "model_shadow_end",
    ];

    /// The wire name of this command's kind.
    pub fn kind(&self) -> &'static str {
        match self {
            CommandBody::Ping => "ping",
            CommandBody::AgentJoined(_) => "agent_joined",
            CommandBody::AgentMessage(_) => "agent_message",
            CommandBody::AgentLeft(_) => "agent_left",
            CommandBody::AgentClosed(_) => "agent_closed",
            CommandBody::ModelUpdate(_) => "model_update",
            CommandBody::ModelRollback(_) => "model_rollback",
            CommandBody::SetBranch(_) => "set_branch",
            CommandBody::ModelShadow(_) => "model_shadow",
            CommandBody::ModelShadowEnd(_) => "model_shadow_end",
        }
    }

    /// A body from its kind and JSON arguments (operators' REST requests,
    /// stored command rows). An unknown kind is its own error.
    pub fn from_parts(kind: &str, args: serde_json::Value) -> Result<CommandBody, CommandError> {
        if !Self::KINDS.contains(&kind) {
            return Err(CommandError::UnknownKind(kind.to_owned()));
        }
        let mut obj = serde_json::Map::new();
        obj.insert("kind".into(), serde_json::Value::String(kind.to_owned()));
        if !args.is_null() {
            obj.insert("args".into(), args);
        }
        serde_json::from_value(serde_json::Value::Object(obj)).map_err(|e| CommandError::BadArgs {
            kind: kind.to_owned(),
            message: e.to_string(),
        })
    }

    /// The arguments as JSON (`null` for a kind without any).
    pub fn args(&self) -> serde_json::Value {
        serde_json::to_value(self)
            .ok()
            .and_then(|mut v| v.get_mut("args").map(serde_json::Value::take))
            .unwrap_or(serde_json::Value::Null)
    }

    /// The conversation a live-chat command concerns.
    pub fn conversation(&self) -> Option<&str> {
        match self {
            CommandBody::AgentJoined(a) => Some(&a.conversation),
            CommandBody::AgentMessage(a) => Some(&a.conversation),
            CommandBody::AgentLeft(a) => Some(&a.conversation),
            CommandBody::AgentClosed(a) => Some(&a.conversation),
            _ => None,
        }
    }
}

/// Why a command could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("unknown command kind {0:?}")]
    UnknownKind(String),
    #[error("bad arguments for {kind}: {message}")]
    BadArgs { kind: String, message: String },
}

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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelUpdate {
    pub rollout: String,
    pub release: crate::release::SignedRelease,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelShadow {
    pub rollout: String,
    pub release: crate::release::SignedRelease,
    /// How long to run the candidate; the node stops on its own after.
    pub for_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelShadowEnd {
    pub rollout: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRollback {
    pub rollout: String,
    /// The version to return to (the node's previous one if empty).
    #[serde(default)]
    pub to_version: String,
}

/// An instruction for a node, kept queued on the controller until acknowledged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    pub id: String,
    #[serde(flatten)]
    pub body: CommandBody,
    pub issued_at: i64,
    /// Commands of one stream (e.g. one conversation's agent lines) are
    /// executed in `seq` order: a node that sees a gap holds back and asks
    /// for the pending commands again, so a command lost in flight and resent
    /// later cannot overtake a newer one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<Stream>,
    /// W3C `traceparent` of the controller's span that issued it (an agent's
    /// line), when the controller exports traces. Not stored: a command
    /// sent again after a reconnect goes without.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
}

impl Down {
    /// Parse a message from the controller. A command this build cannot run
    /// (unknown kind, bad arguments) is [`DownError::Command`] with its id,
    /// so the node refuses it by acknowledgement instead of ignoring it.
    pub fn decode(bytes: &[u8]) -> Result<Down, DownError> {
        let e = match serde_json::from_slice::<Down>(bytes) {
            Ok(d) => return Ok(d),
            Err(e) => e,
        };
        #[derive(Deserialize)]
        struct Probe {
            #[serde(rename = "type")]
            ty: String,
            id: Option<String>,
            kind: Option<String>,
            #[serde(default)]
            args: serde_json::Value,
        }
        match serde_json::from_slice::<Probe>(bytes) {
            Ok(Probe {
                ty,
                id: Some(id),
                kind: Some(kind),
                args,
            }) if ty == "command" => {
                let error = match CommandBody::from_parts(&kind, args) {
                    Err(err) => err,
                    Ok(_) => CommandError::BadArgs {
                        kind,
                        message: e.to_string(),
                    },
                };
                Err(DownError::Command { id, error })
            }
            _ => Err(DownError::Malformed(e.to_string())),
        }
    }
}

/// Why a message from the controller could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DownError {
    /// A command this node cannot run; acknowledge `id` with the error.
    #[error("command {id}: {error}")]
    Command { id: String, error: CommandError },
    #[error("unreadable message from the controller: {0}")]
    Malformed(String),
}

/// A command's place in its stream; `seq` starts at 1 for each key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stream {
    pub key: String,
    pub seq: u64,
}

/// Everything a node needs to enrol, in one line the operator copies from
/// `cloud-controller token create`: `<controller url>#token=<t>&ca=sha256:<hex>`
/// (the fragment is never sent anywhere). Like kubeadm's join command with
/// `--discovery-token-ca-cert-hash`: the node talks to nothing but a server
/// whose chain holds the certificate with that fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Join {
    pub url: String,
    pub token: String,
    /// `sha256:<64 hex>`; `None` only for a controller on plain HTTP.
    pub ca_sha256: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    #[error("a join string looks like https://host:port#token=…&ca=sha256:…; this has no '#'")]
    NoFragment,
    #[error(
        "the join string's URL must start with https:// (or http:// for a controller without TLS)"
    )]
    Scheme,
    #[error("the join string has no token=")]
    NoToken,
    #[error("the join string's ca= is not sha256:<64 hex digits>")]
    Fingerprint,
}

impl std::fmt::Display for Join {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}#token={}", self.url, self.token)?;
        if let Some(ca) = &self.ca_sha256 {
            write!(f, "&ca={ca}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Join {
    type Err = JoinError;

    fn from_str(s: &str) -> Result<Join, JoinError> {
        let (url, fragment) = s.trim().split_once('#').ok_or(JoinError::NoFragment)?;
        if !url.starts_with("https://") && !url.starts_with("http://") {
            return Err(JoinError::Scheme);
        }
        let (mut token, mut ca) = (None, None);
        for pair in fragment.split('&') {
            match pair.split_once('=') {
                Some(("token", t)) if !t.is_empty() => token = Some(t.to_owned()),
                Some(("ca", c)) => ca = Some(c.to_owned()),
                _ => {}
            }
        }
        if let Some(c) = &ca {
            let hex = c.strip_prefix("sha256:").ok_or(JoinError::Fingerprint)?;
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(JoinError::Fingerprint);
            }
        }
        Ok(Join {
            url: url.trim_end_matches('/').to_owned(),
            token: token.ok_or(JoinError::NoToken)?,
            ca_sha256: ca,
        })
    }
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
    /// Model delivery: the controller's model-signing key and QUIC endpoint,
    /// pinned like the rest (absent from controllers without rollouts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<ModelEndpoint>,
}

/// ALPN of the model delivery protocol over QUIC.
pub const MODELS_ALPN: &[u8] = b"edgedesk-models/1";

/// A node's request for one blob (a bundle file by sha256), from `offset`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FetchRequest {
    pub node: String,
    pub blob: String,
    pub offset: u64,
    /// Unix ms; refused outside the controller's allowed clock skew.
    pub ts: i64,
    /// Base64 signature by the node's enrolment key over [`Self::signed_text`].
    pub sig: String,
}

impl FetchRequest {
    pub fn signed_text(&self) -> Vec<u8> {
        format!(
            "edgedesk-models/1\n{}\n{}\n{}\n{}",
            self.node, self.blob, self.offset, self.ts
        )
        .into_bytes()
    }
}

/// The controller's answer line before the bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FetchHeader {
    pub ok: bool,
    /// The blob's whole size (bytes follow from the requested offset).
    pub size: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
}

impl FetchHeader {
    pub fn refused(error: String) -> FetchHeader {
        FetchHeader {
            ok: false,
            size: 0,
            error,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelEndpoint {
    /// Base64 Ed25519 public key that signs releases.
    pub signing_key: String,
    /// QUIC host and port serving bundle files.
    pub quic_host: String,
    pub quic_port: u16,
    /// PEM certificate (CA) the QUIC server's certificate chains to.
    pub ca_pem: String,
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
    fn join_strings_round_trip_and_bad_ones_say_why() {
        let fp = format!("sha256:{}", "ab".repeat(32));
        let j = Join {
            url: "https://ctl.example:8700".into(),
            token: "t0k".into(),
            ca_sha256: Some(fp.clone()),
        };
        assert_eq!(j.to_string().parse::<Join>().unwrap(), j);
        assert_eq!(
            format!("https://ctl.example:8700/#token=t0k&ca={fp}")
                .parse::<Join>()
                .unwrap(),
            j
        );
        for (bad, why) in [
            ("https://ctl:8700", JoinError::NoFragment),
            ("ftp://ctl#token=t", JoinError::Scheme),
            ("https://ctl#ca=sha256:00", JoinError::Fingerprint),
            ("https://ctl#ca=", JoinError::Fingerprint),
            (&format!("https://ctl#ca={fp}"), JoinError::NoToken),
            ("https://ctl#token=t&ca=md5:00", JoinError::Fingerprint),
        ] {
            assert_eq!(bad.parse::<Join>().unwrap_err(), why, "{bad}");
        }
    }

    #[test]
    fn bodies_are_tagged() {
        let up = Up::Hello {
            connect_id: "c".into(),
            sw_version: "1".into(),
            seal_key: "k".into(),
        };
        let s = serde_json::to_string(&up).unwrap();
        assert!(s.contains(r#""type":"hello""#), "{s}");
        assert_eq!(serde_json::from_str::<Up>(&s).unwrap(), up);
        let down = Down::EventsAck {
            ids: vec!["a".into()],
        };
        let s = serde_json::to_string(&down).unwrap();
        assert_eq!(serde_json::from_str::<Down>(&s).unwrap(), down);
        let key = Down::SealKey { key: "k".into() };
        let s = serde_json::to_string(&key).unwrap();
        assert!(s.contains(r#""type":"seal_key""#), "{s}");
        assert_eq!(Down::decode(s.as_bytes()).unwrap(), key);
    }

    #[test]
    fn commands_are_typed_and_keep_their_wire_shape() {
        let cmd = Command {
            trace: None,
            id: "c1".into(),
            body: CommandBody::AgentMessage(AgentMessage {
                conversation: "conv".into(),
                agent_name: "Grace".into(),
                text: "hi".into(),
            }),
            issued_at: 5,
            stream: Some(Stream {
                key: "conv".into(),
                seq: 2,
            }),
        };
        let v = serde_json::to_value(Down::Command(cmd.clone())).unwrap();
        assert_eq!(v["kind"], "agent_message");
        assert_eq!(v["args"]["text"], "hi");
        assert_eq!(v["id"], "c1");
        let back = Down::decode(v.to_string().as_bytes()).unwrap();
        assert_eq!(back, Down::Command(cmd.clone()));
        assert_eq!(cmd.body.args()["agent_name"], "Grace");
        assert_eq!(cmd.body.conversation(), Some("conv"));
        assert_eq!(
            CommandBody::from_parts("agent_message", cmd.body.args()).unwrap(),
            cmd.body
        );
        let ping =
            serde_json::json!({"type": "command", "id": "p", "kind": "ping", "issued_at": 1});
        match Down::decode(ping.to_string().as_bytes()).unwrap() {
            Down::Command(c) => assert_eq!(c.body, CommandBody::Ping),
            other => panic!("{other:?}"),
        }
        assert_eq!(CommandBody::Ping.args(), serde_json::Value::Null);
        assert_eq!(
            CommandBody::from_parts("ping", serde_json::Value::Null),
            Ok(CommandBody::Ping)
        );
    }

    #[test]
    fn unknown_kinds_and_bad_args_are_explicit_errors_with_the_id() {
        let unknown = serde_json::json!({"type": "command", "id": "x1", "kind": "self_destruct", "args": {}, "issued_at": 1});
        assert_eq!(
            Down::decode(unknown.to_string().as_bytes()),
            Err(DownError::Command {
                id: "x1".into(),
                error: CommandError::UnknownKind("self_destruct".into())
            })
        );
        let bad = serde_json::json!({"type": "command", "id": "x2", "kind": "agent_message", "args": {"text": 3}, "issued_at": 1});
        match Down::decode(bad.to_string().as_bytes()) {
            Err(DownError::Command {
                id,
                error: CommandError::BadArgs { kind, .. },
            }) => {
                assert_eq!(id, "x2");
                assert_eq!(kind, "agent_message");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            Down::decode(b"{not json"),
            Err(DownError::Malformed(_))
        ));
        assert!(matches!(
            CommandBody::from_parts("nope", serde_json::Value::Null),
            Err(CommandError::UnknownKind(_))
        ));
    }
}
