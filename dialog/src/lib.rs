//! The dialog engine: an I/O-free state machine.
//!
//! Input: a [`Conversation`] (the persisted state) and one [`Turn`] (the text,
//! what NLU understood, the entities, the clock). Output: the bot's replies and
//! the events to record. No I/O, no clock, no randomness: the caller supplies
//! ids and times, which makes every path testable and replayable.
//!
//! Phases: `Bot` answers from the knowledge base; `Flow` fills slots of a
//! multi-turn flow (book an appointment; report a lost card); `WaitingForAgent`
//! follows an escalation; `LeavingMessage` collects an offline message.
//!
//! The crate's dependency list is the proof of "I/O-free": no tokio, no
//! SQLite, no ONNX Runtime (entities come from `edgedesk-nlu` without its
//! `onnx` feature).

pub mod branch;
pub mod kb;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use chrono::{Datelike, NaiveDate, NaiveTime, Weekday};
use edgedesk_common::chat::{ChatState, Lang, QuickReply, Sender};
use edgedesk_common::event::{
    ChatLine, ConversationSummary, Escalation, EscalationWithdrawn, EventBody, FlowCompleted,
    OfflineMessage, Rating, TranscriptLine,
};
use serde::{Deserialize, Serialize};

pub use branch::{Branch, BranchError};
use edgedesk_nlu::entities::{self, Entities};
pub use kb::KnowledgeBase;

/// Intents with behaviour of their own (not just a knowledge-base answer).
pub const HUMAN_AGENT: &str = "human_agent";
pub const GOODBYE: &str = "goodbye";
pub const AFFIRM: &str = "affirm";
pub const DENY: &str = "deny";
pub const BOOK_APPOINTMENT: &str = "book_appointment";
pub const LOST_CARD: &str = "lost_or_stolen_card";
/// Answered from the branch's opening hours and the node's clock.
pub const BRANCH_HOURS: &str = "branch_hours";
/// Intents answered from one of the branch's facts (the knowledge base's
/// answer is the wording, with `{fact}` placeholders filled in), and the
/// fact without which there is no answer.
pub const BRANCH_FACT_INTENTS: &[(&str, &str)] = &[
    ("branch_address", "address"),
    ("branch_services", "services"),
    ("branch_atm", "atms"),
    ("queue_ticket", "queue"),
    ("branch_documents", "documents"),
];

/// Longest name or message kept from a visitor in the offline-message flow.
const MAX_FIELD_CHARS: usize = 500;
/// Intents remembered per conversation for summaries.
const MAX_INTENTS: usize = 32;

/// Button payloads the engine understands. A visitor may also type them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Agent,
    Cancel,
    LeaveMessage,
    Yes,
    No,
    End,
    TryAgain,
    /// Rate a closed agent chat, 1–5 (`/rate N`).
    Rate(u8),
    /// Stay in the queue after the offer to leave a message.
    KeepWaiting,
}

impl Command {
    pub fn parse(s: &str) -> Option<Command> {
        Some(match s.trim() {
            "/agent" => Command::Agent,
            "/cancel" => Command::Cancel,
            "/leave_message" => Command::LeaveMessage,
            "/yes" => Command::Yes,
            "/no" => Command::No,
            "/end" => Command::End,
            "/try_again" => Command::TryAgain,
            "/keep_waiting" => Command::KeepWaiting,
            other => {
                let n: u8 = other.strip_prefix("/rate ")?.trim().parse().ok()?;
                return (1..=5).contains(&n).then_some(Command::Rate(n));
            }
        })
    }

    fn payload(self) -> String {
        match self {
            Command::Agent => "/agent".into(),
            Command::Cancel => "/cancel".into(),
            Command::LeaveMessage => "/leave_message".into(),
            Command::Yes => "/yes".into(),
            Command::No => "/no".into(),
            Command::End => "/end".into(),
            Command::TryAgain => "/try_again".into(),
            Command::KeepWaiting => "/keep_waiting".into(),
            Command::Rate(n) => format!("/rate {n}"),
        }
    }
}

/// Persisted state of one conversation (stored as JSON with the session).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conversation {
    pub id: String,
    pub lang: Lang,
    pub started_at: i64,
    pub phase: Phase,
    pub low_confidence_streak: u8,
    pub visitor_turns: u32,
    pub intents: Vec<String>,
    pub escalated: bool,
    /// An agent closed the chat and the visitor may rate it.
    #[serde(default)]
    pub awaiting_rating: bool,
    /// The visitor picked the language (EN/中文): their choice wins over
    /// what their messages look like. Detection only picks before that.
    #[serde(default)]
    pub lang_chosen: bool,
    /// When the current escalation started waiting (ms).
    #[serde(default)]
    pub escalated_at: Option<i64>,
    /// The visitor was offered to leave a message after a long wait.
    #[serde(default)]
    pub queue_offer_made: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    Bot,
    Flow(Flow),
    WaitingForAgent,
    LeavingMessage(ContactForm),
    /// A human agent holds the chat; the bot stays silent.
    WithAgent {
        agent: String,
    },
    Ended,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowKind {
    BookAppointment,
    LostCard,
}

impl FlowKind {
    fn name(self) -> &'static str {
        match self {
            FlowKind::BookAppointment => "book_appointment",
            FlowKind::LostCard => "lost_card",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    AskDate,
    AskTime,
    AskLast4,
    Confirm,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Flow {
    pub kind: FlowKind,
    pub step: Step,
    pub slots: BTreeMap<String, String>,
    pub reprompts: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContactStep {
    Name,
    Contact,
    Message,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContactForm {
    pub step: ContactStep,
    pub name: String,
    pub contact: String,
    pub reprompts: u8,
}

/// What NLU made of the text.
#[derive(Debug, Clone, PartialEq)]
pub struct Understanding {
    pub intent: String,
    pub confidence: f32,
    /// Confident and in scope.
    pub answered: bool,
}

/// One visitor turn, with everything the engine needs to decide.
#[derive(Debug, Clone)]
pub struct Turn<'a> {
    pub text: &'a str,
    pub command: Option<Command>,
    pub nlu: Understanding,
    pub entities: Entities,
    pub today: NaiveDate,
    /// The branch's local time of day (the node's clock, as `today`).
    pub local_time: NaiveTime,
    pub now_ms: i64,
    /// Whether a human agent could take the chat (the cloud link; always
    /// `false` on a node without a controller).
    pub agents_available: bool,
    /// Answers the turn's model carries: for intents it learnt, and the
    /// supervisors' released edits (they replace built-in answers; a
    /// branch's own answer wins: `KnowledgeBase::answer_with`).
    pub model_answers: Option<&'a kb::ModelAnswers>,
}

impl Turn<'_> {
    /// The visitor asked to stop what is going on (button or word).
    fn wants_cancel(&self) -> bool {
        self.command == Some(Command::Cancel)
            || (self.command.is_none() && is_cancel_word(self.text))
    }

    /// `true` if the turn confidently means `intent`.
    fn means(&self, intent: &str) -> bool {
        self.nlu.answered && self.nlu.intent == intent
    }

    fn yes(&self) -> bool {
        self.command == Some(Command::Yes) || (self.command.is_none() && self.means(AFFIRM))
    }

    fn no(&self) -> bool {
        self.command == Some(Command::No) || (self.command.is_none() && self.means(DENY))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct BotReply {
    /// Bot, or Agent for a human agent's line, or System for notices.
    pub from: Sender,
    /// The agent who wrote an agent line.
    pub author: Option<String>,
    pub text: String,
    pub quick_replies: Vec<QuickReply>,
    /// The intent this reply answers, if any (shown to agents later).
    pub intent: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Outcome {
    pub replies: Vec<BotReply>,
    pub events: Vec<EventBody>,
}

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub max_reprompts: u8,
    /// The branch's hours and facts at start; [`Engine::set_branch`]
    /// replaces them while the node runs.
    pub branch: Branch,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_reprompts: 2,
            branch: Branch::uniform(
                9,
                17,
                &[
                    Weekday::Mon,
                    Weekday::Tue,
                    Weekday::Wed,
                    Weekday::Thu,
                    Weekday::Fri,
                ],
            ),
        }
    }
}

/// "Monday to Friday" / "周一至周五" for a run of days, else a list.
fn days_text(days: &[Weekday], lang: Lang) -> String {
    let name = |d: &Weekday| branch::day_name(d.num_days_from_monday() as usize, lang);
    let mut sorted: Vec<Weekday> = days.to_vec();
    sorted.sort_by_key(|d| d.num_days_from_monday());
    sorted.dedup();
    let contiguous = sorted
        .windows(2)
        .all(|w| w[1].num_days_from_monday() == w[0].num_days_from_monday() + 1);
    match (sorted.as_slice(), lang) {
        ([], _) => String::new(),
        ([d], _) => name(d).to_owned(),
        ([first, .., last], Lang::En) if contiguous && sorted.len() > 2 => {
            format!("{} to {}", name(first), name(last))
        }
        ([first, .., last], Lang::Zh) if contiguous && sorted.len() > 2 => {
            format!("{}至{}", name(first), name(last))
        }
        (all, Lang::En) => all.iter().map(name).collect::<Vec<_>>().join(", "),
        (all, Lang::Zh) => all.iter().map(name).collect::<Vec<_>>().join("、"),
    }
}

#[derive(Debug, Clone)]
pub struct Engine {
    kb: Arc<KnowledgeBase>,
    cfg: EngineConfig,
    /// Shared by clones: a new branch applies to every session at once.
    /// Readers clone the `Arc` (the lock is held for that alone).
    branch: Arc<RwLock<Arc<Branch>>>,
}

impl Conversation {
    pub fn new(id: String, lang: Lang, now_ms: i64) -> Conversation {
        Conversation {
            id,
            lang,
            started_at: now_ms,
            phase: Phase::Bot,
            low_confidence_streak: 0,
            visitor_turns: 0,
            intents: Vec::new(),
            escalated: false,
            awaiting_rating: false,
            lang_chosen: false,
            escalated_at: None,
            queue_offer_made: false,
        }
    }

    /// The coarse state shown to the page.
    pub fn chat_state(&self) -> ChatState {
        match self.phase {
            Phase::Bot => ChatState::Bot,
            Phase::Flow(_) => ChatState::InFlow,
            Phase::WaitingForAgent => ChatState::WaitingForAgent,
            Phase::LeavingMessage(_) => ChatState::LeavingMessage,
            Phase::WithAgent { .. } => ChatState::WithAgent,
            Phase::Ended => ChatState::Ended,
        }
    }
}

fn is_cancel_word(text: &str) -> bool {
    let t = text
        .trim()
        .trim_end_matches(['.', '!', '。', '！'])
        .to_lowercase();
    matches!(
        t.as_str(),
        "cancel"
            | "stop"
            | "quit"
            | "never mind"
            | "nevermind"
            | "forget it"
            | "cancel that"
            | "取消"
            | "算了"
            | "不办了"
    )
}

impl Engine {
    pub fn new(kb: Arc<KnowledgeBase>, cfg: EngineConfig) -> Engine {
        let branch = Arc::new(RwLock::new(Arc::new(cfg.branch.clone())));
        Engine { kb, cfg, branch }
    }

    /// The branch's hours and facts in use.
    pub fn branch(&self) -> Arc<Branch> {
        self.branch
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The branch as configured at start (what a setting without hours
    /// keeps the week of).
    pub fn configured_branch(&self) -> &Branch {
        &self.cfg.branch
    }

    /// Answer from `branch` from the next turn on (every clone of this
    /// engine sees it).
    pub fn set_branch(&self, branch: Branch) {
        *self.branch.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(branch);
    }

    pub fn kb(&self) -> &KnowledgeBase {
        &self.kb
    }

    /// The first bot line of a new conversation.
    pub fn welcome(&self, lang: Lang) -> BotReply {
        self.reply("welcome", lang, &[], &[])
    }

    fn button(&self, cmd: Command, lang: Lang) -> QuickReply {
        let name = match cmd {
            Command::Agent => "button_agent",
            Command::TryAgain => "button_try_again",
            Command::LeaveMessage => "button_leave_message",
            Command::No => "button_no",
            Command::Yes => "button_yes",
            Command::Cancel => "button_cancel",
            Command::End => "goodbye",
            Command::KeepWaiting => "button_keep_waiting",
            Command::Rate(n) => {
                let label = "★".repeat(n as usize);
                return QuickReply {
                    label,
                    payload: cmd.payload(),
                };
            }
        };
        QuickReply {
            label: self.kb.prompt(name, lang, &[]),
            payload: cmd.payload(),
        }
    }

    fn reply(
        &self,
        prompt: &str,
        lang: Lang,
        vars: &[(&str, &str)],
        buttons: &[Command],
    ) -> BotReply {
        BotReply {
            from: Sender::Bot,
            author: None,
            text: self.kb.prompt(prompt, lang, vars),
            quick_replies: buttons.iter().map(|c| self.button(*c, lang)).collect(),
            intent: None,
        }
    }

    /// End the conversation (goodbye, idle, or the visitor's `/end`) and
    /// produce its summary. Idempotent on an ended conversation.
    pub fn end(&self, conv: &mut Conversation, reason: &str, now_ms: i64) -> Option<EventBody> {
        if conv.phase == Phase::Ended {
            return None;
        }
        conv.phase = Phase::Ended;
        Some(EventBody::ConversationSummary(ConversationSummary {
            conversation: conv.id.clone(),
            lang: conv.lang,
            started_at: conv.started_at,
            ended_at: now_ms,
            visitor_turns: conv.visitor_turns,
            intents: conv.intents.clone(),
            escalated: conv.escalated,
            reason: reason.into(),
            transcript: Vec::new(),
        }))
    }

    /// A human agent took the chat.
    pub fn agent_joined(&self, conv: &mut Conversation, agent: &str) -> BotReply {
        conv.phase = Phase::WithAgent {
            agent: agent.to_owned(),
        };
        conv.escalated = true;
        let mut r = self.reply("agent_joined", conv.lang, &[("agent", agent)], &[]);
        r.from = Sender::System;
        r.author = Some(agent.to_owned());
        r
    }

    /// A human agent's line for the visitor.
    pub fn agent_message(&self, conv: &mut Conversation, agent: &str, text: &str) -> BotReply {
        if !matches!(conv.phase, Phase::WithAgent { .. }) {
            conv.phase = Phase::WithAgent {
                agent: agent.to_owned(),
            };
        }
        BotReply {
            from: Sender::Agent,
            author: Some(agent.to_owned()),
            text: text.to_owned(),
            quick_replies: Vec::new(),
            intent: None,
        }
    }

    /// The agent handed the chat back to the queue.
    pub fn agent_left(&self, conv: &mut Conversation) -> BotReply {
        conv.phase = Phase::WaitingForAgent;
        let mut r = self.reply("agent_left", conv.lang, &[], &[]);
        r.from = Sender::System;
        r
    }

    /// The agent closed the chat: back to the bot, and ask for a rating.
    pub fn agent_closed(&self, conv: &mut Conversation) -> BotReply {
        conv.phase = Phase::Bot;
        conv.awaiting_rating = true;
        let buttons: Vec<Command> = (1..=5).map(Command::Rate).collect();
        let mut r = self.reply("agent_closed", conv.lang, &[], &buttons);
        r.from = Sender::System;
        r
    }

    /// The waiting visitor no longer wants a person (`reason`: see
    /// [`EscalationWithdrawn`]): back to the bot, and the event that takes
    /// the escalation out of the queue. `None` unless waiting.
    pub fn withdraw(&self, conv: &mut Conversation, reason: &str) -> Option<EventBody> {
        if conv.phase != Phase::WaitingForAgent {
            return None;
        }
        conv.phase = Phase::Bot;
        conv.escalated_at = None;
        Some(EventBody::EscalationWithdrawn(EscalationWithdrawn {
            conversation: conv.id.clone(),
            reason: reason.into(),
        }))
    }

    /// After a long wait, offer once to leave a message instead. `None`
    /// unless waiting without the offer made yet.
    pub fn offer_message(&self, conv: &mut Conversation) -> Option<BotReply> {
        if conv.phase != Phase::WaitingForAgent || conv.queue_offer_made {
            return None;
        }
        conv.queue_offer_made = true;
        Some(self.reply(
            "queue_offer",
            conv.lang,
            &[],
            &[Command::LeaveMessage, Command::KeepWaiting],
        ))
    }

    /// The visitor's place in the queue, as a notice (not stored).
    pub fn queue_position(&self, conv: &Conversation, position: u32) -> String {
        let ahead = position.saturating_sub(1).to_string();
        self.kb.prompt(
            "queue_position",
            conv.lang,
            &[("position", &position.to_string()), ("ahead", &ahead)],
        )
    }

    /// Handle one visitor turn.
    pub fn handle(&self, conv: &mut Conversation, turn: &Turn<'_>) -> Outcome {
        let mut out = Outcome::default();
        conv.visitor_turns = conv.visitor_turns.saturating_add(1);
        if !conv.lang_chosen {
            if let Some(lang) = Lang::detect(turn.text) {
                conv.lang = lang;
            }
        }
        if turn.nlu.answered
            && !conv.intents.contains(&turn.nlu.intent)
            && conv.intents.len() < MAX_INTENTS
        {
            conv.intents.push(turn.nlu.intent.clone());
        }
        let intent = turn.nlu.answered.then_some(turn.nlu.intent.as_str());

        // With a human agent the bot is silent: the line goes to the agent.
        if let Phase::WithAgent { .. } = conv.phase {
            if turn.command == Some(Command::End) {
                out.replies.push(self.reply("goodbye", conv.lang, &[], &[]));
                out.events
                    .extend(self.end(conv, "visitor_ended", turn.now_ms));
            } else {
                out.events.push(EventBody::ChatLine(ChatLine {
                    conversation: conv.id.clone(),
                    // The store fills in the id of the stored line.
                    line: TranscriptLine {
                        id: 0,
                        from: Sender::Visitor,
                        text: turn.text.to_owned(),
                        at: turn.now_ms,
                    },
                }));
            }
            return out;
        }
        if let Some(Command::Rate(score)) = turn.command {
            if conv.awaiting_rating {
                conv.awaiting_rating = false;
                out.events.push(EventBody::Rating(Rating {
                    conversation: conv.id.clone(),
                    score,
                }));
                out.replies
                    .push(self.reply("rating_thanks", conv.lang, &[], &[]));
            } else {
                out.replies
                    .push(self.reply("nothing_to_cancel", conv.lang, &[], &[]));
            }
            return out;
        }

        // Global: a request for a person wins everywhere except while already
        // waiting or leaving a message.
        let wants_agent = turn.command == Some(Command::Agent) || intent == Some(HUMAN_AGENT);
        if wants_agent
            && !matches!(
                conv.phase,
                Phase::WaitingForAgent | Phase::LeavingMessage(_)
            )
        {
            self.escalate(conv, turn, &mut out);
            return out;
        }
        let wants_end = turn.command == Some(Command::End)
            || (intent == Some(GOODBYE) && matches!(conv.phase, Phase::Bot | Phase::Ended));
        if wants_end {
            out.replies.push(self.reply("goodbye", conv.lang, &[], &[]));
            if let Some(summary) = self.end(
                conv,
                if turn.command.is_some() {
                    "visitor_ended"
                } else {
                    "goodbye"
                },
                turn.now_ms,
            ) {
                out.events.push(summary);
            }
            return out;
        }

        match conv.phase.clone() {
            Phase::Flow(flow) => self.flow_turn(conv, flow, turn, &mut out),
            Phase::WaitingForAgent => self.waiting_turn(conv, turn, &mut out),
            Phase::LeavingMessage(form) => self.contact_turn(conv, form, turn, &mut out),
            Phase::WithAgent { .. } => {} // handled above
            Phase::Bot | Phase::Ended => {
                conv.phase = Phase::Bot;
                self.bot_turn(conv, turn, &mut out)
            }
        }
        out
    }

    fn escalate(&self, conv: &mut Conversation, turn: &Turn<'_>, out: &mut Outcome) {
        let reason = if conv.low_confidence_streak >= 2 {
            "low_confidence"
        } else {
            "requested"
        };
        conv.escalated = true;
        conv.low_confidence_streak = 0;
        conv.phase = Phase::WaitingForAgent;
        conv.escalated_at = Some(turn.now_ms);
        conv.queue_offer_made = false;
        out.events.push(EventBody::Escalation(Escalation {
            conversation: conv.id.clone(),
            lang: conv.lang,
            reason: reason.into(),
            last_text: turn.text.chars().take(MAX_FIELD_CHARS).collect(),
            intents: conv.intents.clone(),
            // Filled in by the server, which has the stored conversation.
            transcript: Vec::new(),
        }));
        if turn.agents_available {
            out.replies.push(self.reply(
                "escalate_waiting",
                conv.lang,
                &[],
                &[Command::LeaveMessage],
            ));
        } else {
            out.replies.push(self.reply(
                "escalate_unavailable",
                conv.lang,
                &[],
                &[Command::LeaveMessage, Command::No],
            ));
        }
    }

    fn low_confidence(&self, conv: &mut Conversation, turn: &Turn<'_>, out: &mut Outcome) {
        conv.low_confidence_streak = conv.low_confidence_streak.saturating_add(1);
        if conv.low_confidence_streak >= 2 {
            out.replies.push(self.reply(
                "offer_human",
                conv.lang,
                &[],
                &[Command::Agent, Command::TryAgain],
            ));
        } else if turn.nlu.intent == self.oos_label() && turn.nlu.confidence >= 0.5 {
            out.replies
                .push(self.reply("out_of_scope", conv.lang, &[], &[]));
        } else {
            out.replies
                .push(self.reply("rephrase", conv.lang, &[], &[]));
        }
    }

    fn oos_label(&self) -> &'static str {
        "out_of_scope"
    }

    fn bot_turn(&self, conv: &mut Conversation, turn: &Turn<'_>, out: &mut Outcome) {
        if turn.wants_cancel() || turn.command == Some(Command::No) {
            out.replies
                .push(self.reply("nothing_to_cancel", conv.lang, &[], &[]));
            return;
        }
        match turn.command {
            Some(Command::TryAgain) => {
                conv.low_confidence_streak = 0;
                out.replies
                    .push(self.reply("rephrase", conv.lang, &[], &[]));
                return;
            }
            Some(Command::LeaveMessage) => {
                self.start_contact(conv, out);
                return;
            }
            _ => {}
        }
        let Some(intent) = turn.nlu.answered.then_some(turn.nlu.intent.as_str()) else {
            self.low_confidence(conv, turn, out);
            return;
        };
        conv.low_confidence_streak = 0;
        match intent {
            BOOK_APPOINTMENT => self.start_flow(conv, FlowKind::BookAppointment, turn, out),
            LOST_CARD => self.start_flow(conv, FlowKind::LostCard, turn, out),
            BRANCH_HOURS if self.kb.answer(intent).is_some() => self.hours(conv, turn, out),
            _ if self.kb.answer(intent).is_some()
                && BRANCH_FACT_INTENTS.iter().any(|(i, _)| *i == intent) =>
            {
                self.branch_fact(conv, intent, out)
            }
            _ => match self.kb.answer_with(intent, turn.model_answers) {
                Some(answer) => {
                    let labels = match conv.lang {
                        Lang::En => &answer.quick_replies.en,
                        Lang::Zh => &answer.quick_replies.zh,
                    };
                    out.replies.push(BotReply {
                        from: Sender::Bot,
                        author: None,
                        text: match conv.lang {
                            Lang::En => answer.en.clone(),
                            Lang::Zh => answer.zh.clone(),
                        },
                        quick_replies: labels
                            .iter()
                            .map(|l| QuickReply {
                                label: l.clone(),
                                payload: String::new(),
                            })
                            .collect(),
                        intent: Some(intent.to_owned()),
                    });
                }
                None => {
                    let mut r = self.reply("no_answer", conv.lang, &[], &[Command::Agent]);
                    r.intent = Some(intent.to_owned());
                    out.replies.push(r);
                }
            },
        }
    }

    /// The opening hours: about the date the visitor named, else whether
    /// the branch is open now by the node's clock (or when it opens next),
    /// with the week and the holidays coming up.
    fn hours(&self, conv: &Conversation, turn: &Turn<'_>, out: &mut Outcome) {
        let lang = conv.lang;
        let b = self.branch();
        let status = match turn.entities.date.filter(|d| *d != turn.today) {
            Some(date) => branch::date_sentence(date, &b.on(date), lang),
            None => Self::status_now(&b, turn, lang),
        };
        let holidays = b.upcoming_holidays(turn.today, lang);
        let (open, close) = self.usual_hours(&b);
        let answer = self.kb.answer(BRANCH_HOURS).map(|a| match lang {
            Lang::En => a.en.as_str(),
            Lang::Zh => a.zh.as_str(),
        });
        let text = answer
            .unwrap_or("{status}")
            .replace("{status}", &status)
            .replace("{week}", &b.week_text(lang))
            .replace("{holidays}", &holidays)
            .replace("{days}", &days_text(&b.open_days(), lang))
            .replace("{open}", &open)
            .replace("{close}", &close);
        out.replies.push(BotReply {
            from: Sender::Bot,
            author: None,
            text: text.trim().to_owned(),
            quick_replies: Vec::new(),
            intent: Some(BRANCH_HOURS.to_owned()),
        });
    }

    /// "We're open now, until 17:00." and the like, from the node's clock.
    fn status_now(b: &Branch, turn: &Turn<'_>, lang: Lang) -> String {
        let today = b.on(turn.today);
        let now = turn.local_time;
        match today.span {
            Some(s) if s.contains(now) => {
                let close = branch::hm(s.close);
                return match lang {
                    Lang::En => format!("We're open now, until {close}."),
                    Lang::Zh => format!("现在正在营业，今天营业到{close}。"),
                };
            }
            Some(s) if now < s.open => {
                let open = branch::hm(s.open);
                return match lang {
                    Lang::En => format!("We're not open yet; we open today at {open}."),
                    Lang::Zh => format!("现在还没开门，今天{open}开门。"),
                };
            }
            _ => {}
        }
        let holiday = (today.holiday.is_some() && today.span.is_none())
            .then(|| branch::date_sentence(turn.today, &today, lang));
        let next = match b.next_open_after(turn.today) {
            None => match lang {
                Lang::En => "We're closed.".to_owned(),
                Lang::Zh => "现在不营业。".to_owned(),
            },
            Some((d, s)) => {
                let tomorrow = d == turn.today + chrono::Duration::days(1);
                let day = branch::day_name(d.weekday().num_days_from_monday() as usize, lang);
                let open = branch::hm(s.open);
                match lang {
                    Lang::En => {
                        let when = if tomorrow {
                            "tomorrow".to_owned()
                        } else {
                            format!("on {day} {}", d.format("%-d %B"))
                        };
                        format!("We're closed now; we open again {when} at {open}.")
                    }
                    Lang::Zh => {
                        let when = if tomorrow {
                            "明天".to_owned()
                        } else {
                            format!("{}月{}日{day}", d.month(), d.day())
                        };
                        format!("现在不营业，{when}{open}开门。")
                    }
                }
            }
        };
        match holiday {
            Some(h) => format!("{h} {next}"),
            None => next,
        }
    }

    /// The usual opening and closing time, as "9:00" and "17:00".
    fn usual_hours(&self, b: &Branch) -> (String, String) {
        b.usual()
            .map(|s| (branch::hm(s.open), branch::hm(s.close)))
            .unwrap_or_default()
    }

    /// An answer from one of the branch's facts; without the fact, say so
    /// and offer a person.
    fn branch_fact(&self, conv: &Conversation, intent: &str, out: &mut Outcome) {
        let lang = conv.lang;
        let b = self.branch();
        let needed = BRANCH_FACT_INTENTS
            .iter()
            .find(|(i, _)| *i == intent)
            .map(|(_, f)| *f)
            .unwrap_or_default();
        let mut reply = match (b.fact(needed, lang), self.kb.answer(intent)) {
            (Some(_), Some(answer)) => {
                let mut text = match lang {
                    Lang::En => answer.en.clone(),
                    Lang::Zh => answer.zh.clone(),
                };
                for name in edgedesk_common::branch::FACT_NAMES {
                    text = text.replace(&format!("{{{name}}}"), b.fact(name, lang).unwrap_or(""));
                }
                BotReply {
                    from: Sender::Bot,
                    author: None,
                    text: text.trim().to_owned(),
                    quick_replies: Vec::new(),
                    intent: None,
                }
            }
            _ if self.kb.has_prompt("branch_fact_unknown") => {
                self.reply("branch_fact_unknown", lang, &[], &[Command::Agent])
            }
            _ => self.reply("no_answer", lang, &[], &[Command::Agent]),
        };
        reply.intent = Some(intent.to_owned());
        out.replies.push(reply);
    }

    fn start_flow(
        &self,
        conv: &mut Conversation,
        kind: FlowKind,
        turn: &Turn<'_>,
        out: &mut Outcome,
    ) {
        let mut flow = Flow {
            kind,
            step: match kind {
                FlowKind::BookAppointment => Step::AskDate,
                FlowKind::LostCard => Step::AskLast4,
            },
            slots: BTreeMap::new(),
            reprompts: 0,
        };
        // Slots given in the opening sentence ("book tomorrow at 10am") count.
        self.fill_slots(&mut flow, turn, true);
        self.advance(conv, flow, out, false);
    }

    /// Take what this turn offers for the current and later slots.
    /// Returns an error prompt name if a value was given but is not valid.
    fn fill_slots(&self, flow: &mut Flow, turn: &Turn<'_>, opening: bool) -> Option<&'static str> {
        let e = &turn.entities;
        let mut problem = None;
        match flow.kind {
            FlowKind::BookAppointment => {
                let b = self.branch();
                if let Some(date) = e.date {
                    if date < turn.today {
                        problem = Some("appt_date_past");
                    } else if b.on(date).span.is_none() {
                        problem = Some("appt_date_closed");
                    } else {
                        flow.slots
                            .insert("date".into(), date.format("%Y-%m-%d").to_string());
                    }
                }
                if let Some(time) = e.time {
                    // On the chosen day's hours, else on any open day's.
                    let date = flow.slots.get("date").and_then(|d| d.parse().ok());
                    let open = match date {
                        Some(d) => b.open_at(d, time),
                        None => {
                            (0..7).any(|n| b.open_at(turn.today + chrono::Duration::days(n), time))
                        }
                    };
                    if open {
                        flow.slots
                            .insert("time".into(), time.format("%H:%M").to_string());
                    } else {
                        problem = Some("appt_time_closed");
                    }
                }
            }
            FlowKind::LostCard => {
                let last4 = e.card_last4.clone().or_else(|| {
                    if opening {
                        None
                    } else {
                        entities::bare_last4(turn.text)
                    }
                });
                if let Some(d) = last4 {
                    flow.slots.insert("card_last4".into(), d);
                }
            }
        }
        problem
    }

    /// Why a slot value was refused, with the opening hours and days filled
    /// in. `appt_date_closed` is newer than some operators' knowledge bases:
    /// without it, the hours prompt says when the branch is open.
    fn problem_reply(&self, problem: &str, flow: &Flow, lang: Lang) -> BotReply {
        let problem = if problem == "appt_date_closed" && !self.kb.has_prompt(problem) {
            "appt_time_closed"
        } else {
            problem
        };
        let owned = self.flow_vars(flow, lang);
        let vars: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.reply(problem, lang, &vars, &[])
    }

    /// Move to the first unfilled step and ask for it; `reprompt` says the
    /// previous question went unanswered.
    fn advance(&self, conv: &mut Conversation, mut flow: Flow, out: &mut Outcome, reprompt: bool) {
        let lang = conv.lang;
        let next = match flow.kind {
            FlowKind::BookAppointment if !flow.slots.contains_key("date") => Step::AskDate,
            FlowKind::BookAppointment if !flow.slots.contains_key("time") => Step::AskTime,
            FlowKind::LostCard if !flow.slots.contains_key("card_last4") => Step::AskLast4,
            _ => Step::Confirm,
        };
        if next != flow.step {
            flow.step = next;
            flow.reprompts = 0;
        } else if reprompt {
            flow.reprompts += 1;
            if flow.reprompts > self.cfg.max_reprompts {
                conv.phase = Phase::Bot;
                out.replies
                    .push(self.reply("flow_gave_up", lang, &[], &[Command::Agent]));
                return;
            }
        }
        let owned = self.flow_vars(&flow, lang);
        let vars: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let again = reprompt && flow.reprompts > 0;
        let prompt = match (flow.step, again) {
            (Step::AskDate, false) => "appt_ask_date",
            (Step::AskDate, true) => "appt_reprompt_date",
            (Step::AskTime, false) => "appt_ask_time",
            (Step::AskTime, true) => "appt_reprompt_time",
            (Step::AskLast4, false) => "card_ask_last4",
            (Step::AskLast4, true) => "card_reprompt_last4",
            (Step::Confirm, false) if flow.kind == FlowKind::BookAppointment => "appt_confirm",
            (Step::Confirm, true) if flow.kind == FlowKind::BookAppointment => {
                "appt_reprompt_confirm"
            }
            (Step::Confirm, false) => "card_confirm",
            (Step::Confirm, true) => "card_reprompt_confirm",
        };
        let buttons: &[Command] = if flow.step == Step::Confirm {
            &[Command::Yes, Command::No]
        } else {
            &[Command::Cancel]
        };
        out.replies.push(self.reply(prompt, lang, &vars, buttons));
        conv.phase = Phase::Flow(flow);
    }

    /// Placeholder values for a flow's prompts: its slots, and the opening
    /// hours of the chosen day (else the usual ones) and the open days.
    fn flow_vars(&self, flow: &Flow, lang: Lang) -> Vec<(&'static str, String)> {
        let slot = |k: &str| flow.slots.get(k).cloned().unwrap_or_default();
        let b = self.branch();
        let day = flow
            .slots
            .get("date")
            .and_then(|d| d.parse::<NaiveDate>().ok())
            .and_then(|d| b.on(d).span);
        let (open, close) = match day {
            Some(s) => (branch::hm(s.open), branch::hm(s.close)),
            None => self.usual_hours(&b),
        };
        vec![
            ("date", slot("date")),
            ("time", slot("time")),
            ("last4", slot("card_last4")),
            ("open", open),
            ("close", close),
            ("days", days_text(&b.open_days(), lang)),
        ]
    }

    fn flow_turn(
        &self,
        conv: &mut Conversation,
        mut flow: Flow,
        turn: &Turn<'_>,
        out: &mut Outcome,
    ) {
        let lang = conv.lang;
        if turn.wants_cancel() {
            conv.phase = Phase::Bot;
            out.replies.push(self.reply("cancelled", lang, &[], &[]));
            return;
        }
        if flow.step == Step::Confirm {
            if turn.yes() {
                conv.phase = Phase::Bot;
                let owned = self.flow_vars(&flow, lang);
                let vars: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
                let done = if flow.kind == FlowKind::BookAppointment {
                    "appt_done"
                } else {
                    "card_done"
                };
                out.replies.push(self.reply(done, lang, &vars, &[]));
                out.events.push(EventBody::FlowCompleted(FlowCompleted {
                    conversation: conv.id.clone(),
                    flow: flow.kind.name().into(),
                    slots: flow.slots,
                }));
                return;
            }
            if turn.no() {
                conv.phase = Phase::Bot;
                out.replies.push(self.reply("cancelled", lang, &[], &[]));
                return;
            }
            // A correction while confirming ("no, Friday") refills the slots.
            let before = flow.slots.clone();
            let problem = self.fill_slots(&mut flow, turn, false);
            if let Some(p) = problem {
                out.replies.push(self.problem_reply(p, &flow, lang));
            }
            let changed = flow.slots != before;
            self.advance(conv, flow, out, !changed);
            return;
        }
        let before = flow.slots.clone();
        let problem = self.fill_slots(&mut flow, turn, false);
        if let Some(p) = problem {
            out.replies.push(self.problem_reply(p, &flow, lang));
        }
        let progressed = flow.slots != before;
        self.advance(conv, flow, out, !progressed);
    }

    fn waiting_turn(&self, conv: &mut Conversation, turn: &Turn<'_>, out: &mut Outcome) {
        let lang = conv.lang;
        let accept = turn.command == Some(Command::LeaveMessage) || turn.yes();
        let decline = turn.no() || turn.wants_cancel();
        if turn.command == Some(Command::KeepWaiting) {
            out.replies
                .push(self.reply("escalate_waiting", lang, &[], &[Command::LeaveMessage]));
        } else if accept {
            out.events.extend(self.withdraw(conv, "offline_message"));
            self.start_contact(conv, out);
        } else if decline {
            out.events.extend(self.withdraw(conv, "declined"));
            out.replies
                .push(self.reply("contact_declined", lang, &[], &[]));
        } else {
            let buttons: &[Command] = if turn.agents_available {
                &[Command::LeaveMessage]
            } else {
                &[Command::LeaveMessage, Command::No]
            };
            out.replies
                .push(self.reply("waiting_still", lang, &[], buttons));
        }
    }

    fn start_contact(&self, conv: &mut Conversation, out: &mut Outcome) {
        conv.phase = Phase::LeavingMessage(ContactForm {
            step: ContactStep::Name,
            name: String::new(),
            contact: String::new(),
            reprompts: 0,
        });
        out.replies
            .push(self.reply("contact_ask_name", conv.lang, &[], &[Command::Cancel]));
    }

    fn contact_turn(
        &self,
        conv: &mut Conversation,
        mut form: ContactForm,
        turn: &Turn<'_>,
        out: &mut Outcome,
    ) {
        let lang = conv.lang;
        if turn.wants_cancel() {
            conv.phase = Phase::Bot;
            out.replies
                .push(self.reply("contact_declined", lang, &[], &[]));
            return;
        }
        let text: String = turn.text.trim().chars().take(MAX_FIELD_CHARS).collect();
        let found_contact = turn
            .entities
            .email
            .clone()
            .or_else(|| turn.entities.phone.clone());
        match form.step {
            ContactStep::Name => {
                form.name = text;
                if let Some(c) = found_contact {
                    form.contact = c;
                    form.step = ContactStep::Message;
                    out.replies.push(self.reply(
                        "contact_ask_message",
                        lang,
                        &[],
                        &[Command::Cancel],
                    ));
                } else {
                    form.step = ContactStep::Contact;
                    out.replies.push(self.reply(
                        "contact_ask_contact",
                        lang,
                        &[("name", &form.name)],
                        &[Command::Cancel],
                    ));
                }
            }
            ContactStep::Contact => match found_contact {
                Some(c) => {
                    form.contact = c;
                    form.step = ContactStep::Message;
                    out.replies.push(self.reply(
                        "contact_ask_message",
                        lang,
                        &[],
                        &[Command::Cancel],
                    ));
                }
                None => {
                    form.reprompts += 1;
                    if form.reprompts > self.cfg.max_reprompts {
                        conv.phase = Phase::Bot;
                        out.replies
                            .push(self.reply("contact_declined", lang, &[], &[]));
                        return;
                    }
                    out.replies.push(self.reply(
                        "contact_reprompt_contact",
                        lang,
                        &[],
                        &[Command::Cancel],
                    ));
                }
            },
            ContactStep::Message => {
                out.events.push(EventBody::OfflineMessage(OfflineMessage {
                    conversation: conv.id.clone(),
                    lang,
                    name: form.name.clone(),
                    contact: form.contact.clone(),
                    message: text,
                }));
                out.replies.push(self.reply(
                    "contact_done",
                    lang,
                    &[("contact", &form.contact)],
                    &[],
                ));
                conv.phase = Phase::Bot;
                return;
            }
        }
        conv.phase = Phase::LeavingMessage(form);
    }
}

#[cfg(test)]
mod tests;
