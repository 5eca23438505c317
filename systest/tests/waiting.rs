//! The visitor's side of a handoff on a real node: the language they chose
//! wins, a visitor who closes the page while waiting leaves the queue (and
//! keeps their place if they come back in time), a long wait offers a
//! message instead, an ended conversation is never reopened or joined, and
//! a very long conversation still resumes.

use std::time::Duration;

use edge_node::session::{AgentAction, now_ms};
use edgedesk_common::chat::{ChatState, Lang, ServerFrame};
use edgedesk_systest::*;

fn reply_lang(frames: &[ServerFrame]) -> Lang {
    match &frames[0] {
        ServerFrame::Reply { lang, .. } => *lang,
        other => panic!("expected a reply, got {other:?}"),
    }
}

#[tokio::test]
async fn the_language_the_visitor_chose_wins_over_what_they_type() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(config(&dir)).await;
    // Chose English, then writes Chinese words: still English.
    let mut ws = node.connect().await;
    send(&mut ws, &hello_in(Lang::En)).await;
    let ServerFrame::Welcome { lang, .. } = recv(&mut ws).await else {
        panic!()
    };
    assert_eq!(lang, Lang::En);
    let (_, r) = say(&mut ws, &msg("Thanks 👍 — 谢谢")).await;
    assert_eq!(reply_lang(&r), Lang::En);
    let (_, r) = say(&mut ws, &msg("我的卡丢了")).await;
    assert_eq!(reply_lang(&r), Lang::En, "{r:?}");
    // Chose 中文: Chinese from the greeting on, also for English words.
    let mut ws = node.connect().await;
    send(&mut ws, &hello_in(Lang::Zh)).await;
    let ServerFrame::Welcome { lang, history, .. } = recv(&mut ws).await else {
        panic!()
    };
    assert_eq!(lang, Lang::Zh);
    assert!(history[0].text.contains("您好"), "{history:?}");
    let (_, r) = say(&mut ws, &msg("ok thanks")).await;
    assert_eq!(reply_lang(&r), Lang::Zh);
    // Not chosen: the first message's language is detected.
    let mut ws = node.connect().await;
    start_session(&mut ws).await;
    let (_, r) = say(&mut ws, &msg("我的卡丢了")).await;
    assert_eq!(reply_lang(&r), Lang::Zh);
    node.stop().await;
}

/// A node (abandonment grace 30 s) whose waiting visitor closed the page and
/// has been reported gone (past the 10 s presence grace); their token.
async fn visitor_gone(dir: &tempfile::TempDir) -> (TestNode, String) {
    let mut c = config(dir);
    c.dialog.abandon_grace_secs = 30;
    let node = TestNode::start(c).await;
    let mut ws = node.connect().await;
    let (token, _) = escalate(&mut ws).await;
    drop(ws);
    eventually(10, "the visitor is reported gone", || async {
        node.departures(now_ms() + 11_000).await;
        node.outbox_kinds()
            .await
            .contains(&"visitor_presence".to_owned())
    })
    .await;
    (node, token)
}

#[tokio::test]
async fn a_waiting_visitor_who_leaves_is_shown_gone_then_taken_out_of_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    // Gone for longer than the presence grace: the agent is told.
    let (node, token) = visitor_gone(&dir).await;
    assert!(
        !node
            .outbox_kinds()
            .await
            .contains(&"escalation_withdrawn".to_owned())
    );
    // Gone for longer than the abandonment grace: out of the queue.
    assert_eq!(node.departures(now_ms() + 31_000).await, 1);
    assert_eq!(
        node.outbox_kinds().await,
        vec!["escalation", "visitor_presence", "escalation_withdrawn"]
    );
    // Coming back later, the visitor talks to the bot again (not waiting).
    let mut ws = node.connect().await;
    send(&mut ws, &hello(Some(&token))).await;
    let ServerFrame::Welcome { state, resumed, .. } = recv(&mut ws).await else {
        panic!()
    };
    assert_eq!((state, resumed), (ChatState::Bot, true));
    node.stop().await;
}

#[tokio::test]
async fn a_visitor_back_within_the_grace_keeps_their_place_and_the_agent_sees_them_back() {
    let dir = tempfile::tempdir().unwrap();
    let (node, token) = visitor_gone(&dir).await;
    let mut ws = node.connect().await;
    send(&mut ws, &hello(Some(&token))).await;
    let ServerFrame::Welcome { state, .. } = recv(&mut ws).await else {
        panic!()
    };
    assert_eq!(state, ChatState::WaitingForAgent, "still in the queue");
    let presence: Vec<bool> = node
        .store()
        .outbox_peek(10)
        .await
        .unwrap()
        .iter()
        .filter_map(|e| match &e.event.body {
            edgedesk_common::event::EventBody::VisitorPresence(p) => Some(p.present),
            _ => None,
        })
        .collect();
    assert_eq!(presence, vec![false, true]);
    assert_eq!(
        node.departures(now_ms() + 60_000).await,
        0,
        "a visitor who is here is never withdrawn"
    );
    node.stop().await;
}

#[tokio::test]
async fn a_long_wait_offers_a_message_and_the_visitor_may_keep_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(&dir);
    c.dialog.queue_offer_secs = 1;
    let node = TestNode::start(c).await;
    let mut ws = node.connect().await;
    escalate(&mut ws).await;
    // The offer arrives by itself once the wait is long enough.
    let f = tokio::time::timeout(Duration::from_secs(5), recv(&mut ws))
        .await
        .expect("an offer within 5 s");
    let ServerFrame::Reply {
        text,
        quick_replies,
        state,
        ..
    } = &f
    else {
        panic!("{f:?}")
    };
    assert!(text.contains("keep waiting"), "{text}");
    let payloads: Vec<&str> = quick_replies.iter().map(|q| q.payload.as_str()).collect();
    assert_eq!(payloads, vec!["/leave_message", "/keep_waiting"]);
    assert_eq!(*state, ChatState::WaitingForAgent);
    let (_, r) = say(&mut ws, &button("Keep waiting", "/keep_waiting")).await;
    assert!(
        matches!(
            &r[0],
            ServerFrame::Reply {
                state: ChatState::WaitingForAgent,
                ..
            }
        ),
        "{r:?}"
    );
    node.stop().await;
}

#[tokio::test]
async fn an_ended_conversation_is_never_resumed_nor_joined() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(config(&dir)).await;
    let mut ws = node.connect().await;
    let (token, conversation) = escalate(&mut ws).await;
    let (_, r) = say(&mut ws, &button("End chat", "/end")).await;
    assert!(
        matches!(
            &r[0],
            ServerFrame::Reply {
                state: ChatState::Ended,
                ..
            }
        ),
        "{r:?}"
    );
    assert!(
        node.outbox_kinds()
            .await
            .contains(&"conversation_summary".to_owned())
    );
    // An agent's join that arrives now is refused, and nothing is stored.
    let joined = node
        .sessions()
        .deliver(
            &conversation,
            AgentAction::Joined {
                agent: "Grace".into(),
            },
        )
        .await;
    assert!(joined.is_err(), "{joined:?}");
    let lines = node.store().history(&conversation, 100).await.unwrap();
    assert!(
        !lines.iter().any(|l| l.text.contains("Grace")),
        "no 'agent has joined' after goodbye: {lines:?}"
    );
    // The token brings a fresh conversation, not the old one.
    let mut ws = node.connect().await;
    send(&mut ws, &hello(Some(&token))).await;
    let ServerFrame::Welcome {
        conversation: again,
        resumed,
        history,
        ..
    } = recv(&mut ws).await
    else {
        panic!()
    };
    assert_ne!(again, conversation);
    assert!(!resumed);
    assert_eq!(history.len(), 1, "only the greeting");
    node.stop().await;
}

#[tokio::test]
async fn a_conversation_longer_than_a_frame_still_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(&dir);
    c.server.rate_limit_per_sec = 1000.0;
    c.server.rate_limit_burst = 1000;
    let node = TestNode::start(c).await;
    let mut ws = node.connect().await;
    let (token, _) = start_session(&mut ws).await;
    // About 100 KiB of visitor text plus the bot's answers.
    let long = "where is the nearest branch with a cash machine? ".repeat(20);
    for _ in 0..100 {
        say(&mut ws, &msg(&long)).await;
    }
    drop(ws);
    let mut ws = node.connect().await;
    send(&mut ws, &hello(Some(&token))).await;
    let f = recv(&mut ws).await;
    let ServerFrame::Welcome { history, more, .. } = &f else {
        panic!("{f:?}")
    };
    let size = serde_json::to_string(&f).unwrap().len();
    assert!(*more, "older lines are left out and the page is told");
    assert!(
        size < 64 * 1024,
        "the welcome fits the write buffer: {size} bytes"
    );
    assert!(
        history.len() >= 10,
        "the newest lines are there: {}",
        history.len()
    );
    // The conversation goes on after the resume.
    let (_, r) = say(&mut ws, &msg("thanks")).await;
    assert!(matches!(&r[0], ServerFrame::Reply { .. }));
    node.stop().await;
}
