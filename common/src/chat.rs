//! Kiosk chat protocol: JSON text frames over a WebSocket at `/ws`.
//!
//! Every frame is an object with a `type` tag. The client opens with
//! [`ClientFrame::Hello`] carrying [`PROTOCOL_VERSION`]; the server answers
//! [`ServerFrame::Welcome`] with the session token and the conversation so far.
//! Unknown fields are ignored so that newer clients can talk to older nodes.

use serde::{Deserialize, Serialize};

/// Version of the chat protocol spoken by this build. A client announcing a
/// different major version is refused with [`ErrorCode::UnsupportedVersion`].
pub const PROTOCOL_VERSION: u32 = 1;

/// Languages the kiosk speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Lang {
    #[default]
    En,
    Zh,
}

impl Lang {
    pub fn as_str(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Zh => "zh",
        }
    }

    /// Guess the language of a visitor's text: any CJK ideograph means Chinese.
    pub fn detect(text: &str) -> Option<Lang> {
        let mut latin = false;
        for c in text.chars() {
            if ('\u{4e00}'..='\u{9fff}').contains(&c) || ('\u{3400}'..='\u{4dbf}').contains(&c) {
                return Some(Lang::Zh);
            }
            latin |= c.is_ascii_alphabetic();
        }
        latin.then_some(Lang::En)
    }
}

impl std::str::FromStr for Lang {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "en" => Ok(Lang::En),
            "zh" => Ok(Lang::Zh),
            other => Err(format!(
                "unknown language {other:?} (expected \"en\" or \"zh\")"
            )),
        }
    }
}

/// Frames a visitor's browser sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// First frame on a connection. `session` resumes an earlier session.
    Hello {
        v: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lang: Option<Lang>,
    },
    /// Something the visitor typed or a quick reply they tapped.
    Message {
        text: String,
        /// Client-chosen id echoed in the [`ServerFrame::Ack`] so the page can
        /// mark the message as stored.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_id: Option<String>,
        /// Set when the visitor tapped a quick reply: its `payload`. `text`
        /// then carries the button's label, which is what the transcript shows.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        payload: Option<String>,
        /// Optional W3C trace context (`00-<trace>-<span>-<flags>`): the
        /// node's span for this turn becomes its child. Invalid: ignored.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        traceparent: Option<String>,
    },
    /// The visitor switched the page language.
    SetLang { lang: Lang },
    /// The visitor is typing (forwarded to a human agent when one holds the chat).
    Typing,
    /// Keep-alive; answered with [`ServerFrame::Pong`].
    Ping,
}

/// One stored line of the conversation, as replayed on resume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryItem {
    pub id: i64,
    pub from: Sender,
    /// The person who wrote an agent line (their display name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    pub text: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quick_replies: Vec<QuickReply>,
    /// Unix milliseconds.
    pub at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sender {
    Visitor,
    Bot,
    Agent,
    System,
}

impl Sender {
    pub fn as_str(self) -> &'static str {
        match self {
            Sender::Visitor => "visitor",
            Sender::Bot => "bot",
            Sender::Agent => "agent",
            Sender::System => "system",
        }
    }

    pub fn parse(s: &str) -> Option<Sender> {
        Some(match s {
            "visitor" => Sender::Visitor,
            "bot" => Sender::Bot,
            "agent" => Sender::Agent,
            "system" => Sender::System,
            _ => return None,
        })
    }
}

/// A button under a bot reply; tapping it sends a message whose text is
/// `label` and whose `payload` is this one (a command such as `/agent`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuickReply {
    pub label: String,
    pub payload: String,
}

/// Where the conversation stands, so the page can adapt (e.g. show a banner).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ChatState {
    #[default]
    Bot,
    InFlow,
    WaitingForAgent,
    LeavingMessage,
    WithAgent,
    Ended,
}

/// Frames the edge node sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    Welcome {
        v: u32,
        /// Bearer token the page keeps (e.g. in localStorage) to resume.
        session: String,
        conversation: String,
        lang: Lang,
        state: ChatState,
        /// `true` when the session given in `Hello` was restored.
        resumed: bool,
        history: Vec<HistoryItem>,
        /// Older lines exist that `history` leaves out (it is kept small).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        more: bool,
        /// A shared kiosk forgets the session after this long without input
        /// once the bot has answered (0: never).
        #[serde(default)]
        idle_reset_secs: u32,
    },
    /// The visitor's message with `client_id` is stored.
    Ack {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_id: Option<String>,
        id: i64,
    },
    /// A reply from the bot, a human agent (`author` names them) or the system.
    Reply {
        id: i64,
        from: Sender,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        author: Option<String>,
        text: String,
        lang: Lang,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        quick_replies: Vec<QuickReply>,
        state: ChatState,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        intent: Option<String>,
        /// The W3C trace context of the node's span that produced it (a bot
        /// turn, an agent's line), when the node exports traces.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        traceparent: Option<String>,
    },
    Typing {
        from: Sender,
    },
    /// A line shown earlier changes (the greeting after a language switch).
    Edit {
        id: i64,
        text: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        quick_replies: Vec<QuickReply>,
    },
    /// Informational line shown apart from the conversation.
    Notice {
        code: String,
        text: String,
    },
    /// A request could not be served; the connection stays usable unless the
    /// server closes it afterwards.
    Error {
        code: ErrorCode,
        message: String,
        /// The visitor's message this error refuses, when the frame named one:
        /// the page marks that line "not sent" and leaves the others alone.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_id: Option<String>,
    },
    Pong,
}

/// Machine-readable reason in a [`ServerFrame::Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    TooLarge,
    InvalidJson,
    UnknownType,
    BinaryNotSupported,
    EmptyMessage,
    RateLimited,
    UnknownSession,
    UnsupportedVersion,
    HelloRequired,
    Internal,
    /// The node is overloaded; the message was not taken. Send it again.
    Busy,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::TooLarge => "too_large",
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::BinaryNotSupported => "binary_not_supported",
            ErrorCode::EmptyMessage => "empty_message",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::UnknownSession => "unknown_session",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::HelloRequired => "hello_required",
            ErrorCode::Internal => "internal",
            ErrorCode::Busy => "busy",
        }
    }
}

/// Why a text frame could not be turned into a [`ClientFrame`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// Not JSON, or JSON of the wrong shape for its `type`.
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    /// Well-formed JSON whose `type` this version does not know.
    #[error("unknown message type {0:?}")]
    UnknownType(String),
}

impl DecodeError {
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::InvalidJson(_) => ErrorCode::InvalidJson,
            DecodeError::UnknownType(_) => ErrorCode::UnknownType,
        }
    }
}

const CLIENT_TYPES: &[&str] = &["hello", "message", "set_lang", "typing", "ping"];

impl ClientFrame {
    /// Decode a text frame, telling an unknown `type` apart from bad JSON.
    pub fn decode(text: &str) -> Result<ClientFrame, DecodeError> {
        // The common case parses once; only a failure is looked at twice.
        if let Ok(frame) = serde_json::from_str::<ClientFrame>(text) {
            return Ok(frame);
        }
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| DecodeError::InvalidJson(e.to_string()))?;
        let kind = value
            .get("type")
            .and_then(|t| t.as_str())
            .ok_or_else(|| DecodeError::InvalidJson("missing string field \"type\"".into()))?;
        if !CLIENT_TYPES.contains(&kind) {
            return Err(DecodeError::UnknownType(kind.chars().take(64).collect()));
        }
        serde_json::from_value(value).map_err(|e| DecodeError::InvalidJson(e.to_string()))
    }
}

/// The `client_id` of a text frame, read without decoding the rest, so that
/// an error about a frame that could not be taken (rate limit, overload) can
/// still name the message it refuses.
pub fn probe_client_id(text: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Probe {
        client_id: Option<String>,
    }
    serde_json::from_str::<Probe>(text).ok()?.client_id
}

impl ServerFrame {
    pub fn to_json(&self) -> String {
        // Serialising these plain types cannot fail.
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{\"type\":\"pong\"}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_distinguishes_bad_json_and_unknown_type() {
        assert!(matches!(
            ClientFrame::decode("{"),
            Err(DecodeError::InvalidJson(_))
        ));
        assert!(matches!(
            ClientFrame::decode("[1]"),
            Err(DecodeError::InvalidJson(_))
        ));
        assert_eq!(
            ClientFrame::decode(r#"{"type":"launch_rocket"}"#),
            Err(DecodeError::UnknownType("launch_rocket".into()))
        );
        assert!(matches!(
            ClientFrame::decode(r#"{"type":"message"}"#),
            Err(DecodeError::InvalidJson(_))
        ));
    }

    #[test]
    fn unknown_fields_are_tolerated() {
        let f = ClientFrame::decode(r#"{"type":"message","text":"hi","future":1}"#).unwrap();
        assert_eq!(
            f,
            ClientFrame::Message {
                traceparent: None,
                text: "hi".into(),
                client_id: None,
                payload: None
            }
        );
    }

    #[test]
    fn server_frames_round_trip() {
        let f = ServerFrame::Reply {
            traceparent: None,
            id: 3,
            from: Sender::Bot,
            text: "hello".into(),
            lang: Lang::Zh,
            quick_replies: vec![QuickReply {
                label: "Yes".into(),
                payload: "yes".into(),
            }],
            state: ChatState::InFlow,
            intent: Some("greeting".into()),
            author: None,
        };
        let json = f.to_json();
        assert!(
            !json.contains("author"),
            "absent author is not sent: {json}"
        );
        assert!(json.contains(r#""type":"reply""#), "{json}");
        assert_eq!(serde_json::from_str::<ServerFrame>(&json).unwrap(), f);
    }

    #[test]
    fn language_detection() {
        assert_eq!(Lang::detect("我的卡丢了"), Some(Lang::Zh));
        assert_eq!(Lang::detect("lost card 卡"), Some(Lang::Zh));
        assert_eq!(Lang::detect("hello"), Some(Lang::En));
        assert_eq!(Lang::detect("1234"), None);
    }
}
