//! Engine tests: each dialog path, plus property tests over random turn sequences.

use super::*;
use chrono::{NaiveDate, NaiveTime};
use proptest::prelude::*;

fn engine() -> Engine {
    Engine::new(Arc::new(KnowledgeBase::builtin()), EngineConfig::default())
}

fn today() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 11, 26).unwrap()
}

/// A turn as the server would build it: `intent` with confidence 0.9, or a
/// low-confidence guess when `intent` is empty.
fn turn<'a>(text: &'a str, intent: &str) -> Turn<'a> {
    Turn {
        text,
        command: Command::parse(text),
        nlu: Understanding {
            intent: if intent.is_empty() {
                "card_arrival".into()
            } else {
                intent.into()
            },
            confidence: if intent.is_empty() { 0.1 } else { 0.9 },
            answered: !intent.is_empty() && intent != "out_of_scope",
        },
        entities: edgedesk_nlu::entities::extract(text, today()),
        today: today(),
        local_time: NaiveTime::from_hms_opt(10, 0, 0).unwrap(),
        now_ms: 1_000,
        agents_available: false,
        model_answers: None,
    }
}

fn conv() -> Conversation {
    Conversation::new("c1".into(), Lang::En, 0)
}

#[test]
fn a_learnt_intent_is_answered_from_the_model_and_a_released_edit_replaces_the_built_in_answer() {
    let answers = kb::ModelAnswers::parse(
        "[intents.queue_number]\nen = \"Take a number at the machine by the door.\"\nzh = \"请在门口的机器取号。\"\n\
         [intents.card_arrival]\nen = \"model text\"\nzh = \"模型\"\n",
        "answers.toml",
    )
    .unwrap();
    let (e, mut c) = (engine(), conv());
    let mut t = turn("where do I get a number", "queue_number");
    let out = e.handle(&mut c, &t);
    let none = KnowledgeBase::builtin().prompt("no_answer", Lang::En, &[]);
    assert_eq!(
        out.replies[0].text, none,
        "without the model's answers the bot has none"
    );
    t.model_answers = Some(&answers);
    let out = e.handle(&mut c, &t);
    assert_eq!(
        out.replies[0].text,
        "Take a number at the machine by the door."
    );
    assert_eq!(out.replies[0].intent.as_deref(), Some("queue_number"));
    // An answer the model carries for an intent the built-in knowledge base
    // answers too (a supervisor's released edit) replaces the built-in one;
    // a branch's own answer would win (kb::tests).
    let mut t = turn("when will my card arrive", "card_arrival");
    let out = e.handle(&mut c, &t);
    assert!(
        out.replies[0].text.contains("5 working days"),
        "{:?}",
        out.replies
    );
    t.model_answers = Some(&answers);
    let out = e.handle(&mut c, &t);
    assert_eq!(out.replies[0].text, "model text");
    // Bad files are refused by name.
    let e = kb::ModelAnswers::parse("[intents.x]\nen = \"\"\nzh = \"y\"\n", "answers.toml")
        .unwrap_err();
    assert!(e.to_string().contains("intents.x"), "{e}");
    assert!(kb::ModelAnswers::parse("[intents.x]\nen = 1\n", "answers.toml").is_err());
}

#[test]
fn answers_known_intents_from_the_knowledge_base() {
    let (e, mut c) = (engine(), conv());
    let out = e.handle(&mut c, &turn("when will my card arrive", "card_arrival"));
    assert_eq!(out.replies.len(), 1);
    assert!(
        out.replies[0].text.contains("5 working days"),
        "{:?}",
        out.replies
    );
    assert_eq!(out.replies[0].intent.as_deref(), Some("card_arrival"));
    assert_eq!(c.phase, Phase::Bot);
    assert!(out.events.is_empty());
}

#[test]
fn chinese_text_switches_language() {
    let (e, mut c) = (engine(), conv());
    let out = e.handle(&mut c, &turn("新卡什么时候寄到", "card_arrival"));
    assert_eq!(c.lang, Lang::Zh);
    assert!(out.replies[0].text.contains("工作日"), "{:?}", out.replies);
}

#[test]
fn low_confidence_rephrase_then_offer_human() {
    let (e, mut c) = (engine(), conv());
    let first = e.handle(&mut c, &turn("blorp", ""));
    assert!(first.replies[0].text.contains("another way"));
    let second = e.handle(&mut c, &turn("blorp blorp", ""));
    assert!(second.replies[0].text.contains("talk to a person"));
    assert_eq!(second.replies[0].quick_replies[0].payload, "/agent");
    // A confident turn resets the streak.
    e.handle(&mut c, &turn("hi", "greeting"));
    assert_eq!(c.low_confidence_streak, 0);
    // Accepting the offer escalates with reason low_confidence.
    e.handle(&mut c, &turn("blorp", ""));
    e.handle(&mut c, &turn("blorp", ""));
    let out = e.handle(&mut c, &turn("/agent", ""));
    let EventBody::Escalation(esc) = &out.events[0] else {
        panic!("{:?}", out.events)
    };
    assert_eq!(esc.reason, "low_confidence");
}

#[test]
fn explicit_request_escalates_and_offers_offline_message() {
    let (e, mut c) = (engine(), conv());
    let out = e.handle(&mut c, &turn("I want a human", "human_agent"));
    assert_eq!(c.phase, Phase::WaitingForAgent);
    assert!(c.escalated);
    assert!(matches!(&out.events[0], EventBody::Escalation(x) if x.reason == "requested"));
    assert!(out.replies[0].text.contains("nobody is free"));
    // Leave a message: name, contact (reprompt once), message.
    let out = e.handle(&mut c, &turn("/leave_message", ""));
    assert!(out.replies[0].text.contains("name"));
    e.handle(&mut c, &turn("Ada Lovelace", ""));
    let out = e.handle(&mut c, &turn("whenever", ""));
    assert!(out.replies[0].text.contains("phone number or an e-mail"));
    e.handle(&mut c, &turn("+44 20 7946 0958", ""));
    let out = e.handle(&mut c, &turn("Please call me about my mortgage", ""));
    let EventBody::OfflineMessage(m) = &out.events[0] else {
        panic!("{:?}", out.events)
    };
    assert_eq!(m.name, "Ada Lovelace");
    assert_eq!(m.contact, "+442079460958");
    assert_eq!(m.message, "Please call me about my mortgage");
    assert_eq!(c.phase, Phase::Bot);
}

#[test]
fn waiting_visitor_can_decline() {
    let (e, mut c) = (engine(), conv());
    e.handle(&mut c, &turn("human", "human_agent"));
    let out = e.handle(&mut c, &turn("/no", ""));
    assert_eq!(c.phase, Phase::Bot);
    // The only event takes the escalation out of the queue.
    assert!(
        matches!(&out.events[..], [EventBody::EscalationWithdrawn(w)] if w.reason == "declined"),
        "{:?}",
        out.events
    );
}

#[test]
fn appointment_flow_with_reprompts_and_confirmation() {
    let (e, mut c) = (engine(), conv());
    let out = e.handle(
        &mut c,
        &turn("I want to book an appointment", "book_appointment"),
    );
    assert!(out.replies[0].text.contains("Which day"));
    let out = e.handle(&mut c, &turn("hmm", ""));
    assert!(
        out.replies[0].text.contains("Which day?"),
        "{:?}",
        out.replies
    );
    let out = e.handle(&mut c, &turn("tomorrow", ""));
    assert!(
        out.replies[0].text.contains("What time"),
        "{:?}",
        out.replies
    );
    let out = e.handle(&mut c, &turn("at 8pm", ""));
    assert!(
        out.replies.iter().any(|r| r.text.contains("closed")),
        "{:?}",
        out.replies
    );
    let out = e.handle(&mut c, &turn("10am", ""));
    assert!(
        out.replies[0].text.contains("2026-11-27 at 10:00"),
        "{:?}",
        out.replies
    );
    let out = e.handle(&mut c, &turn("yes", "affirm"));
    let EventBody::FlowCompleted(f) = &out.events[0] else {
        panic!()
    };
    assert_eq!(f.flow, "book_appointment");
    assert_eq!(f.slots["date"], "2026-11-27");
    assert_eq!(f.slots["time"], "10:00");
    assert_eq!(c.phase, Phase::Bot);
}

#[test]
fn appointment_slots_from_the_opening_sentence() {
    let (e, mut c) = (engine(), conv());
    let out = e.handle(
        &mut c,
        &turn("book me in for Friday at 2pm", "book_appointment"),
    );
    assert!(
        out.replies[0].text.contains("2026-11-27 at 14:00"),
        "{:?}",
        out.replies
    );
    let out = e.handle(&mut c, &turn("no", "deny"));
    assert!(out.events.is_empty());
    assert_eq!(c.phase, Phase::Bot);
}

#[test]
fn appointment_rejects_past_dates() {
    let (e, mut c) = (engine(), conv());
    e.handle(&mut c, &turn("appointment", "book_appointment"));
    let out = e.handle(&mut c, &turn("2026-01-01", ""));
    assert!(out.replies[0].text.contains("passed"), "{:?}", out.replies);
    assert!(matches!(&c.phase, Phase::Flow(f) if f.step == Step::AskDate));
}

/// A day the branch is closed is refused like a past date, saying when it
/// is open; an operator's knowledge base without the newer prompt falls
/// back to the hours prompt, never to a bare prompt name.
#[test]
fn appointment_rejects_days_the_branch_is_closed() {
    let (e, mut c) = (engine(), conv());
    e.handle(&mut c, &turn("appointment", "book_appointment"));
    // 2026-11-29 is a Sunday.
    let out = e.handle(&mut c, &turn("2026-11-29", ""));
    assert!(
        out.replies[0].text.contains("closed that day")
            && out.replies[0]
                .text
                .contains("Monday to Friday, 9:00 to 17:00"),
        "{:?}",
        out.replies
    );
    assert!(matches!(&c.phase, Phase::Flow(f) if f.step == Step::AskDate));
    let out = e.handle(&mut c, &turn("2026-11-30", ""));
    assert!(
        matches!(&c.phase, Phase::Flow(f) if f.step == Step::AskTime),
        "{:?}",
        out.replies
    );

    let mut zh = Conversation::new("z".into(), Lang::Zh, 0);
    e.handle(&mut zh, &turn("我想预约", "book_appointment"));
    let out = e.handle(&mut zh, &turn("2026-11-29", ""));
    assert!(
        out.replies[0].text.contains("那天不营业"),
        "{:?}",
        out.replies
    );

    let old_kb =
        crate::kb::DEFAULT_KB.replace("[prompts.appt_date_closed]", "[prompts.unused_old]");
    let old = Engine::new(
        Arc::new(KnowledgeBase::parse(&old_kb, "old.toml").unwrap()),
        EngineConfig::default(),
    );
    let mut c = conv();
    old.handle(&mut c, &turn("appointment", "book_appointment"));
    let out = old.handle(&mut c, &turn("2026-11-29", ""));
    assert!(
        out.replies[0].text.contains("We're closed then"),
        "{:?}",
        out.replies
    );
}

#[test]
fn lost_card_flow_in_chinese() {
    let (e, mut c) = (engine(), conv());
    let out = e.handle(&mut c, &turn("我的卡丢了", "lost_or_stolen_card"));
    assert!(out.replies[0].text.contains("后四位"), "{:?}", out.replies);
    let out = e.handle(&mut c, &turn("1234", ""));
    assert!(out.replies[0].text.contains("1234"), "{:?}", out.replies);
    let out = e.handle(&mut c, &turn("是的", "affirm"));
    let EventBody::FlowCompleted(f) = &out.events[0] else {
        panic!()
    };
    assert_eq!(f.slots["card_last4"], "1234");
    assert!(out.replies[0].text.contains("已冻结"));
}

#[test]
fn flows_give_up_after_max_reprompts() {
    let (e, mut c) = (engine(), conv());
    e.handle(&mut c, &turn("lost card", "lost_or_stolen_card"));
    e.handle(&mut c, &turn("what", ""));
    e.handle(&mut c, &turn("what", ""));
    let out = e.handle(&mut c, &turn("what", ""));
    assert_eq!(c.phase, Phase::Bot);
    assert_eq!(out.replies[0].quick_replies[0].payload, "/agent");
}

#[test]
fn flows_cancel_midway_by_word_or_button() {
    for cancel in ["cancel", "取消", "/cancel"] {
        let (e, mut c) = (engine(), conv());
        e.handle(&mut c, &turn("appointment", "book_appointment"));
        e.handle(&mut c, &turn("tomorrow", ""));
        let out = e.handle(&mut c, &turn(cancel, ""));
        assert_eq!(c.phase, Phase::Bot, "{cancel}");
        assert!(out.events.is_empty());
    }
}

#[test]
fn human_request_leaves_a_flow() {
    let (e, mut c) = (engine(), conv());
    e.handle(&mut c, &turn("lost card", "lost_or_stolen_card"));
    let out = e.handle(&mut c, &turn("let me talk to a person", "human_agent"));
    assert_eq!(c.phase, Phase::WaitingForAgent);
    assert_eq!(out.events.len(), 1);
}

#[test]
fn goodbye_ends_with_summary() {
    let (e, mut c) = (engine(), conv());
    e.handle(&mut c, &turn("hi", "greeting"));
    e.handle(&mut c, &turn("card?", "card_arrival"));
    let out = e.handle(&mut c, &turn("bye", "goodbye"));
    let EventBody::ConversationSummary(s) = &out.events[0] else {
        panic!()
    };
    assert_eq!(s.visitor_turns, 3);
    assert_eq!(s.intents, vec!["greeting", "card_arrival", "goodbye"]);
    assert_eq!(s.reason, "goodbye");
    assert_eq!(c.phase, Phase::Ended);
    assert!(
        e.end(&mut c, "idle", 5).is_none(),
        "ending twice yields one summary"
    );
}

#[test]
fn cancel_outside_a_flow_is_harmless() {
    let (e, mut c) = (engine(), conv());
    let out = e.handle(&mut c, &turn("cancel", ""));
    assert!(out.replies[0].text.contains("nothing to cancel"));
    assert_eq!(c.phase, Phase::Bot);
}

fn arb_turn() -> impl Strategy<Value = (String, String)> {
    let texts = prop::sample::select(vec![
        "hi",
        "tomorrow",
        "10am",
        "1234",
        "yes",
        "no",
        "cancel",
        "/cancel",
        "/agent",
        "/yes",
        "/no",
        "/leave_message",
        "Ada",
        "+44 20 7946 0958",
        "bye",
        "blorp",
        "2026-01-01",
        "明天",
        "取消",
        "/end",
    ]);
    let intents = prop::sample::select(vec![
        "",
        "greeting",
        "affirm",
        "deny",
        "book_appointment",
        "lost_or_stolen_card",
        "human_agent",
        "goodbye",
        "card_arrival",
        "out_of_scope",
    ]);
    (texts, intents).prop_map(|(t, i)| (t.to_string(), i.to_string()))
}

proptest! {
    /// Whatever the visitor does: every turn gets a reply, each escalation
    /// event matches a move into WaitingForAgent, and a cancel in a flow
    /// always returns to the bot without completing it.
    #[test]
    fn any_sequence_is_answered_and_cancellable(turns in prop::collection::vec(arb_turn(), 1..40)) {
        let e = engine();
        let mut c = conv();
        for (text, intent) in &turns {
            let before = c.phase.clone();
            let out = e.handle(&mut c, &turn(text, intent));
            prop_assert!(!out.replies.is_empty());
            for ev in &out.events {
                match ev {
                    EventBody::Escalation(_) => prop_assert_eq!(&c.phase, &Phase::WaitingForAgent),
                    EventBody::ConversationSummary(_) => prop_assert_eq!(&c.phase, &Phase::Ended),
                    EventBody::FlowCompleted(_) => prop_assert!(matches!(before, Phase::Flow(_))),
                    EventBody::OfflineMessage(_) => prop_assert!(matches!(before, Phase::LeavingMessage(_))),
                    EventBody::ChatLine(_) => {
                        let with_agent = matches!(before, Phase::WithAgent { .. });
                        prop_assert!(with_agent);
                    }
                    EventBody::Rating(_) => prop_assert_eq!(&c.phase, &before),
                    EventBody::EscalationWithdrawn(_) => {
                        prop_assert_eq!(&before, &Phase::WaitingForAgent);
                        prop_assert!(c.phase != Phase::WaitingForAgent);
                    }
                    EventBody::VisitorPresence(_) => prop_assert!(false, "the engine never reports presence"),
                    EventBody::Sample(_) => prop_assert!(false, "samples are the session's, not the engine's"),
                }
            }
            if let Phase::Flow(_) = c.phase {
                let mut copy = c.clone();
                let out = e.handle(&mut copy, &turn("/cancel", ""));
                prop_assert_eq!(copy.phase, Phase::Bot);
                prop_assert!(out.events.is_empty());
            }
        }
    }
}

#[test]
fn with_an_agent_the_bot_is_silent_and_the_close_asks_for_a_rating() {
    let (e, mut c) = (engine(), conv());
    e.handle(&mut c, &turn("I want a human", "human_agent"));
    let joined = e.agent_joined(&mut c, "Grace");
    assert_eq!(joined.from, Sender::System);
    assert!(joined.text.contains("Grace"));
    assert_eq!(c.chat_state(), ChatState::WithAgent);
    // Even a recognisable question goes to the agent, not the bot.
    let out = e.handle(&mut c, &turn("when will my card arrive", "card_arrival"));
    assert!(out.replies.is_empty(), "{:?}", out.replies);
    let EventBody::ChatLine(l) = &out.events[0] else {
        panic!("{:?}", out.events)
    };
    assert_eq!(l.line.text, "when will my card arrive");
    assert_eq!(l.line.from, Sender::Visitor);
    let said = e.agent_message(&mut c, "Grace", "It is on its way.");
    assert_eq!(
        (said.from, said.text.as_str()),
        (Sender::Agent, "It is on its way.")
    );
    let closed = e.agent_closed(&mut c);
    assert_eq!(closed.quick_replies.len(), 5);
    assert_eq!(closed.quick_replies[4].payload, "/rate 5");
    assert_eq!(c.phase, Phase::Bot);
    let out = e.handle(&mut c, &turn("/rate 4", ""));
    assert!(matches!(&out.events[0], EventBody::Rating(r) if r.score == 4));
    let again = e.handle(&mut c, &turn("/rate 5", ""));
    assert!(again.events.is_empty(), "one rating per closed chat");
}

#[test]
fn agent_handing_back_to_the_queue() {
    let (e, mut c) = (engine(), conv());
    e.agent_joined(&mut c, "Grace");
    let left = e.agent_left(&mut c);
    assert_eq!(c.phase, Phase::WaitingForAgent);
    assert!(left.text.contains("queue"));
    assert_eq!(Command::parse("/rate 9"), None);
    assert_eq!(Command::parse("/rate 3"), Some(Command::Rate(3)));
}

#[test]
fn the_visitors_language_choice_wins_over_detection() {
    let e = engine();
    // Chosen English: a Chinese word does not switch the bot.
    let mut c = conv();
    c.lang_chosen = true;
    let out = e.handle(&mut c, &turn("Thanks 👍 — 谢谢", "thanks"));
    assert_eq!(c.lang, Lang::En);
    assert!(
        out.replies[0].text.is_ascii() || !out.replies[0].text.contains('谢'),
        "{:?}",
        out.replies
    );
    // Not chosen yet: detection picks.
    let mut c = conv();
    e.handle(&mut c, &turn("谢谢", "thanks"));
    assert_eq!(c.lang, Lang::Zh);
    // Chosen Chinese stays Chinese for an English line, closing prompt included.
    let mut c = conv();
    c.lang = Lang::Zh;
    c.lang_chosen = true;
    e.handle(&mut c, &turn("I want a human", "human_agent"));
    e.agent_joined(&mut c, "Grace");
    let closed = e.agent_closed(&mut c);
    assert_eq!(c.lang, Lang::Zh);
    assert!(
        closed
            .text
            .chars()
            .any(|ch| ('\u{4e00}'..='\u{9fff}').contains(&ch)),
        "{}",
        closed.text
    );
}

#[test]
fn a_waiting_visitor_who_declines_or_leaves_a_message_withdraws_the_escalation() {
    let e = engine();
    for (text, reason) in [("/no", "declined"), ("/leave_message", "offline_message")] {
        let mut c = conv();
        e.handle(&mut c, &turn("I want a human", "human_agent"));
        assert_eq!(c.phase, Phase::WaitingForAgent);
        assert!(c.escalated_at.is_some());
        let out = e.handle(&mut c, &turn(text, ""));
        let withdrawn: Vec<_> = out
            .events
            .iter()
            .filter_map(|ev| match ev {
                EventBody::EscalationWithdrawn(w) => Some(w.reason.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(withdrawn, vec![reason], "{text}");
        assert_ne!(c.phase, Phase::WaitingForAgent);
    }
    // Someone who left: withdrawn once; a visitor not waiting has nothing to withdraw.
    let mut c = conv();
    e.handle(&mut c, &turn("I want a human", "human_agent"));
    assert!(e.withdraw(&mut c, "visitor_left").is_some());
    assert!(e.withdraw(&mut c, "visitor_left").is_none());
}

#[test]
fn a_long_wait_offers_a_message_once_and_keeping_waiting_stays_queued() {
    let e = engine();
    let mut c = conv();
    e.handle(&mut c, &turn("I want a human", "human_agent"));
    let offer = e.offer_message(&mut c).expect("offered");
    let payloads: Vec<&str> = offer
        .quick_replies
        .iter()
        .map(|q| q.payload.as_str())
        .collect();
    assert_eq!(payloads, vec!["/leave_message", "/keep_waiting"]);
    assert!(e.offer_message(&mut c).is_none(), "offered once");
    let out = e.handle(&mut c, &turn("/keep_waiting", ""));
    assert!(out.events.is_empty());
    assert_eq!(c.phase, Phase::WaitingForAgent);
    assert!(e.queue_position(&c, 3).contains('3'));
}

/// The branch's hours, and whether it is open now by the node's clock: in
/// hours, before opening, after closing on a Friday (next: Monday), in both
/// languages.
#[test]
fn opening_hours_answer_from_the_clock() {
    let e = engine();
    let at = |h: u32, day: u32, lang: Lang, text: &str| {
        let mut c = Conversation::new("h".into(), lang, 0);
        let mut t = turn(text, BRANCH_HOURS);
        t.today = NaiveDate::from_ymd_opt(2026, 11, day).unwrap();
        t.local_time = NaiveTime::from_hms_opt(h, 30, 0).unwrap();
        let out = e.handle(&mut c, &t);
        assert_eq!(out.replies.len(), 1);
        assert_eq!(out.replies[0].intent.as_deref(), Some(BRANCH_HOURS));
        out.replies[0].text.clone()
    };
    // 2026-11-26 is a Thursday, 27 a Friday.
    let open = at(10, 26, Lang::En, "are you open now");
    assert!(open.contains("open now, until 17:00"), "{open}");
    assert!(open.contains("Monday to Friday 9:00–17:00"), "{open}");
    let early = at(7, 26, Lang::En, "what time do you open");
    assert!(early.contains("open today at 9:00"), "{early}");
    let evening = at(18, 26, Lang::En, "when do you open");
    assert!(evening.contains("again tomorrow at 9:00"), "{evening}");
    let friday_night = at(18, 27, Lang::En, "when do you open");
    assert!(
        friday_night.contains("again on Monday 30 November at 9:00"),
        "{friday_night}"
    );
    let zh = at(10, 26, Lang::Zh, "营业时间是几点");
    assert!(zh.contains("现在正在营业，今天营业到17:00"), "{zh}");
    assert!(zh.contains("周一至周五 9:00–17:00"), "{zh}");
    let zh_closed = at(18, 27, Lang::Zh, "现在开门吗");
    assert!(zh_closed.contains("11月30日周一9:00开门"), "{zh_closed}");
    // Other opening days are described as configured.
    let weekend = Engine::new(
        Arc::new(KnowledgeBase::builtin()),
        EngineConfig {
            branch: Branch::uniform(9, 17, &[chrono::Weekday::Sat, chrono::Weekday::Mon]),
            ..EngineConfig::default()
        },
    );
    let mut c = conv();
    let out = weekend.handle(&mut c, &turn("what are your hours", BRANCH_HOURS));
    assert!(
        out.replies[0]
            .text
            .contains("Monday 9:00–17:00, Saturday 9:00–17:00"),
        "{}",
        out.replies[0].text
    );
    // 2026-11-26 is a Thursday: not an opening day there; next is Saturday.
    assert!(
        out.replies[0]
            .text
            .contains("again on Saturday 28 November at 9:00"),
        "{}",
        out.replies[0].text
    );
}

/// A branch as operators write it: Saturday mornings, a holiday, facts.
fn branch_info() -> edgedesk_common::branch::BranchInfo {
    serde_json::from_value(serde_json::json!({
        "hours": {"mon": "09:00-17:00", "tue": "09:00-17:00", "wed": "09:00-17:00",
                  "thu": "09:00-17:00", "fri": "09:30-16:30", "sat": "10:00-13:00",
                  "sun": "closed"},
        "holidays": [{"date": "2026-12-25", "name": {"en": "Christmas Day", "zh": "圣诞节"}},
                     {"date": "2026-12-24", "hours": "09:00-12:00"}],
        "facts": {"address": {"en": "12 Harbour Road, ground floor.", "zh": "海港路12号一楼。"},
                  "directions": {"en": "Exit B of Harbour station."},
                  "atms": {"en": "Two ATMs in the lobby, open 24 hours.", "zh": "大堂有两台24小时ATM。"}}
    }))
    .unwrap()
}

fn branch_engine() -> Engine {
    let e = engine();
    e.set_branch(Branch::parse(&branch_info(), &EngineConfig::default().branch).unwrap());
    e
}

fn ask_hours(e: &Engine, lang: Lang, text: &str, today: NaiveDate, h: u32, m: u32) -> String {
    let mut c = Conversation::new("h".into(), lang, 0);
    let mut t = turn(text, BRANCH_HOURS);
    t.entities = edgedesk_nlu::entities::extract(text, today);
    t.today = today;
    t.local_time = NaiveTime::from_hms_opt(h, m, 0).unwrap();
    let out = e.handle(&mut c, &t);
    out.replies[0].text.clone()
}

/// Each day has its own hours; a holiday is named and closes the branch;
/// a date the visitor names is answered for that date.
#[test]
fn opening_hours_per_day_and_holidays() {
    let e = branch_engine();
    let d = |m: u32, day: u32| NaiveDate::from_ymd_opt(2026, m, day).unwrap();
    // Friday 27 November, 16:45: Fridays close at 16:30.
    let fri = ask_hours(&e, Lang::En, "are you open now", d(11, 27), 16, 45);
    assert!(fri.contains("again tomorrow at 10:00"), "{fri}");
    assert!(
        fri.contains("Monday to Thursday 9:00–17:00, Friday 9:30–16:30, Saturday 10:00–13:00"),
        "{fri}"
    );
    // Saturday 11:00: open until 13:00.
    let sat = ask_hours(&e, Lang::En, "open now?", d(11, 28), 11, 0);
    assert!(sat.contains("open now, until 13:00"), "{sat}");
    // Two weeks before Christmas the holidays are mentioned.
    let dec = ask_hours(&e, Lang::En, "opening hours", d(12, 14), 10, 0);
    assert!(
        dec.contains("Thursday 24 December: open 9:00–12:00.")
            && dec.contains("Friday 25 December (Christmas Day): closed."),
        "{dec}"
    );
    let far = ask_hours(&e, Lang::En, "opening hours", d(11, 26), 10, 0);
    assert!(!far.contains("December"), "{far}");
    // On Christmas Day itself, the next opening is Saturday.
    let xmas = ask_hours(&e, Lang::Zh, "今天开门吗", d(12, 25), 10, 0);
    assert!(xmas.contains("12月25日（周五，圣诞节）不营业"), "{xmas}");
    assert!(xmas.contains("明天10:00开门"), "{xmas}");
    // A named date: tomorrow (Sunday) is closed.
    let sun = ask_hours(&e, Lang::En, "are you open tomorrow", d(11, 28), 10, 0);
    assert!(sun.starts_with("Sunday 29 November: closed."), "{sun}");
    let zh = ask_hours(&e, Lang::Zh, "明天营业吗", d(11, 27), 10, 0);
    assert!(zh.starts_with("11月28日（周六）营业 10:00–13:00。"), "{zh}");
}

/// Appointments follow the chosen day's hours, holidays included.
#[test]
fn appointments_follow_each_days_hours() {
    let e = branch_engine();
    let mut c = conv();
    e.handle(&mut c, &turn("appointment", "book_appointment"));
    // Saturday 28 November at 3pm: Saturdays close at 13:00.
    e.handle(&mut c, &turn("2026-11-28", ""));
    let out = e.handle(&mut c, &turn("at 3pm", ""));
    assert!(
        out.replies[0].text.contains("10:00 to 13:00"),
        "{:?}",
        out.replies
    );
    let out = e.handle(&mut c, &turn("at 11am", ""));
    assert!(
        matches!(&c.phase, Phase::Flow(f) if f.step == Step::Confirm),
        "{out:?}"
    );
    // Christmas Day is refused as a closed day.
    let mut c = conv();
    e.handle(&mut c, &turn("appointment", "book_appointment"));
    let out = e.handle(&mut c, &turn("2026-12-25", ""));
    assert!(
        out.replies[0].text.contains("closed that day"),
        "{:?}",
        out.replies
    );
}

/// Branch questions are answered from the branch's facts in the visitor's
/// language (the other language when only one is given); a fact the branch
/// has not set is said so, with a person offered; a new branch applies at
/// once to every clone of the engine.
#[test]
fn branch_facts_answer_in_both_languages() {
    let e = engine();
    let ask = |e: &Engine, lang: Lang, intent: &str| {
        let mut c = Conversation::new("f".into(), lang, 0);
        c.lang_chosen = true;
        let out = e.handle(&mut c, &turn("where", intent));
        out.replies[0].clone()
    };
    let before = ask(&e, Lang::En, "branch_address");
    assert!(
        before.text.contains("don't have that information"),
        "{before:?}"
    );
    assert_eq!(before.quick_replies.len(), 1);
    let clone = e.clone();
    e.set_branch(Branch::parse(&branch_info(), &EngineConfig::default().branch).unwrap());
    let en = ask(&clone, Lang::En, "branch_address");
    assert_eq!(
        en.text,
        "12 Harbour Road, ground floor. Exit B of Harbour station."
    );
    assert_eq!(en.intent.as_deref(), Some("branch_address"));
    // No Chinese directions: the English ones are used.
    let zh = ask(&clone, Lang::Zh, "branch_address");
    assert_eq!(zh.text, "海港路12号一楼。Exit B of Harbour station.");
    let atm = ask(&clone, Lang::Zh, "branch_atm");
    assert_eq!(atm.text, "大堂有两台24小时ATM。");
    let docs = ask(&clone, Lang::Zh, "branch_documents");
    assert!(docs.text.contains("工作人员"), "{docs:?}");
}

/// Every mistake in a branch's settings is refused with the field named.
#[test]
fn branch_settings_errors_name_the_field() {
    let base = EngineConfig::default().branch;
    let cases: &[(&str, serde_json::Value, &str)] = &[
        (
            "unknown day",
            serde_json::json!({"hours": {"funday": "09:00-17:00"}}),
            "unknown day \"funday\"",
        ),
        (
            "hours backwards",
            serde_json::json!({"hours": {"mon": "17:00-09:00"}}),
            "branch.hours.mon",
        ),
        (
            "hours not times",
            serde_json::json!({"hours": {"mon": "nine to five"}}),
            "HH:MM-HH:MM",
        ),
        (
            "minute out of range",
            serde_json::json!({"hours": {"tue": "09:75-17:00"}}),
            "branch.hours.tue",
        ),
        (
            "holiday not a date",
            serde_json::json!({"holidays": [{"date": "25/12/2026"}]}),
            "\"25/12/2026\" is not a date",
        ),
        (
            "holiday twice",
            serde_json::json!({"holidays": [{"date": "2026-12-25"}, {"date": "2026-12-25"}]}),
            "listed twice",
        ),
        (
            "holiday bad hours",
            serde_json::json!({"holidays": [{"date": "2026-12-24", "hours": "noon"}]}),
            "branch.holidays.2026-12-24.hours",
        ),
        (
            "unknown fact",
            serde_json::json!({"facts": {"adress": {"en": "x"}}}),
            "unknown fact \"adress\"",
        ),
        (
            "empty fact",
            serde_json::json!({"facts": {"atms": {"en": " ", "zh": ""}}}),
            "branch.facts.atms",
        ),
        (
            "fact too long",
            serde_json::json!({"facts": {"queue": {"en": "x".repeat(1001)}}}),
            "longer than 1000",
        ),
    ];
    for (name, json, want) in cases {
        let info: edgedesk_common::branch::BranchInfo =
            serde_json::from_value(json.clone()).unwrap();
        let e = Branch::parse(&info, &base).expect_err(name);
        assert!(e.to_string().contains(want), "{name}: {e}");
    }
    // Full day names and "24:00" are accepted; days not named are closed.
    let info =
        serde_json::from_value(serde_json::json!({"hours": {"Saturday": "08:00-24:00"}})).unwrap();
    let b = Branch::parse(&info, &base).unwrap();
    assert_eq!(b.open_days(), vec![chrono::Weekday::Sat]);
    // No hours at all: the node's older settings stay.
    let info =
        serde_json::from_value(serde_json::json!({"facts": {"queue": {"zh": "取号机在门口"}}}))
            .unwrap();
    assert_eq!(Branch::parse(&info, &base).unwrap().open_days().len(), 5);
}
