//! Events an edge node records for the cloud.
//!
//! Each is written to the node's outbox in the same SQLite transaction as the
//! change it describes, and later forwarded upstream. The body is tagged by
//! `kind` so a consumer can route without knowing every variant.

use serde::{Deserialize, Serialize};

use crate::chat::Lang;

/// One outbox entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Globally unique id (UUID v4), used to store each event once upstream.
    pub id: String,
    /// Unix milliseconds when the event happened.
    pub at: i64,
    /// W3C `traceparent` of the node's span that recorded it, when the node
    /// exports traces: the controller's spans for it continue that trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
    #[serde(flatten)]
    pub body: EventBody,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventBody {
    /// A conversation ended (goodbye, idle timeout or shutdown of the flow).
    ConversationSummary(ConversationSummary),
    /// The visitor needs a person.
    Escalation(Escalation),
    /// Nobody could come; the visitor left contact details.
    OfflineMessage(OfflineMessage),
    /// A multi-turn flow reached its confirmed end (appointment, card block).
    FlowCompleted(FlowCompleted),
    /// A visitor's line while a human agent holds the chat.
    ChatLine(ChatLine),
    /// The visitor rated a closed agent chat.
    Rating(Rating),
    /// A waiting visitor no longer wants a person: they left, declined, or
    /// left a message instead. The escalation leaves the queue.
    EscalationWithdrawn(EscalationWithdrawn),
    /// The visitor of an escalated conversation left the page or came back.
    VisitorPresence(VisitorPresence),
    /// A visitor turn worth a person's label (the learning loop), masked.
    Sample(Sample),
}

impl EventBody {
    /// Stable name of the variant, as stored in the outbox `kind` column.
    pub fn kind(&self) -> &'static str {
        match self {
            EventBody::ConversationSummary(_) => "conversation_summary",
            EventBody::Escalation(_) => "escalation",
            EventBody::OfflineMessage(_) => "offline_message",
            EventBody::FlowCompleted(_) => "flow_completed",
            EventBody::ChatLine(_) => "chat_line",
            EventBody::Rating(_) => "rating",
            EventBody::EscalationWithdrawn(_) => "escalation_withdrawn",
            EventBody::VisitorPresence(_) => "visitor_presence",
            EventBody::Sample(_) => "sample",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversationSummary {
    pub conversation: String,
    pub lang: Lang,
    pub started_at: i64,
    pub ended_at: i64,
    pub visitor_turns: u32,
    /// Distinct intents recognised, in first-seen order.
    pub intents: Vec<String>,
    pub escalated: bool,
    /// Why it ended: `goodbye`, `idle`, `visitor_ended`.
    pub reason: String,
    /// The conversation's lines, oldest first (filled by the node's store in
    /// the transaction that records the end), for the cloud's history search.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transcript: Vec<TranscriptLine>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Escalation {
    pub conversation: String,
    pub lang: Lang,
    /// `requested` (the visitor asked) or `low_confidence` (the bot gave up).
    pub reason: String,
    /// The last visitor utterance, for the agent's context.
    pub last_text: String,
    pub intents: Vec<String>,
    /// The conversation so far (bot turns too), oldest first, for the agent.
    #[serde(default)]
    pub transcript: Vec<TranscriptLine>,
}

/// A line of a transcript as sent to the cloud.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TranscriptLine {
    /// The node's message id (orders lines, deduplicates resends).
    pub id: i64,
    pub from: crate::chat::Sender,
    pub text: String,
    pub at: i64,
}

impl From<crate::chat::HistoryItem> for TranscriptLine {
    fn from(h: crate::chat::HistoryItem) -> Self {
        TranscriptLine {
            id: h.id,
            from: h.from,
            text: h.text,
            at: h.at,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatLine {
    pub conversation: String,
    pub line: TranscriptLine,
}

/// A visitor turn the model could learn from. `text` is masked by the one
/// masking function before it leaves the branch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub conversation: String,
    pub text: String,
    pub lang: Lang,
    pub reason: SampleReason,
    pub model_version: String,
    /// The model's top guesses, best first (at most three).
    pub guesses: Vec<Guess>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Guess {
    pub label: String,
    pub score: f32,
}

/// Why a turn was sent up for labelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SampleReason {
    /// Below the confidence threshold.
    LowConfidence,
    /// Below the threshold, and the bot asked the visitor to rephrase.
    Rephrase,
    /// Judged out of scope.
    OutOfScope,
    /// The conversation went to a person (the agent's handling follows).
    Escalated,
    /// The visitor rated the chat 1 or 2.
    RatedLow,
    /// The visitor cancelled, at its first question, the flow the bot
    /// started on this line (the bot took it for something else).
    Cancelled,
}

impl SampleReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SampleReason::LowConfidence => "low_confidence",
            SampleReason::Rephrase => "rephrase",
            SampleReason::OutOfScope => "out_of_scope",
            SampleReason::Escalated => "escalated",
            SampleReason::RatedLow => "rated_low",
            SampleReason::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rating {
    pub conversation: String,
    /// 1 (poor) to 5 (excellent).
    pub score: u8,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EscalationWithdrawn {
    pub conversation: String,
    /// `visitor_left` (gone longer than the grace), `declined` (said no
    /// while waiting) or `offline_message` (left a message instead).
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VisitorPresence {
    pub conversation: String,
    /// Whether a page holds the conversation now.
    pub present: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OfflineMessage {
    pub conversation: String,
    pub lang: Lang,
    pub name: String,
    /// Phone number or e-mail address as the visitor gave it.
    pub contact: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowCompleted {
    pub conversation: String,
    /// `book_appointment` or `lost_card`.
    pub flow: String,
    /// Slot values, e.g. `date`, `time`, `card_last4`.
    pub slots: std::collections::BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_json_carries_kind_tag() {
        let e = Event {
            trace: None,
            id: "e1".into(),
            at: 5,
            body: EventBody::Escalation(Escalation {
                conversation: "c".into(),
                lang: Lang::En,
                reason: "requested".into(),
                last_text: "human please".into(),
                intents: vec!["human_agent".into()],
                transcript: vec![],
            }),
        };
        let json = serde_json::to_string(&e).unwrap();
        assert!(json.contains(r#""kind":"escalation""#), "{json}");
        assert_eq!(serde_json::from_str::<Event>(&json).unwrap(), e);
        assert_eq!(e.body.kind(), "escalation");
    }
}
