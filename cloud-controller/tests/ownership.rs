//! A conversation belongs to the node that started it: events from another
//! node naming it (lines, ratings, endings, withdrawals, presence, offline
//! messages) are stored and acknowledged but change nothing.

mod support;
use support::*;

use edgedesk_common::chat::{Lang, Sender};
use edgedesk_common::event::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_nodes_events_cannot_touch_a_conversation() {
    let (ctl, token, _dir) = controller().await;
    let store = &ctl.store;
    ingest(
        store,
        "branch-a",
        vec![escalation("conv-x", "en", &[], &["help please"], 1_000)],
        1_000,
    )
    .await;
    let line = |text: &str, id: i64| {
        EventBody::ChatLine(ChatLine {
            conversation: "conv-x".into(),
            line: TranscriptLine {
                id,
                from: Sender::Visitor,
                text: text.into(),
                at: 2_000,
            },
        })
    };
    ingest(
        store,
        "branch-b",
        vec![
            line("injected by another branch", 50),
            EventBody::Rating(Rating {
                conversation: "conv-x".into(),
                score: 1,
            }),
            EventBody::VisitorPresence(VisitorPresence {
                conversation: "conv-x".into(),
                present: false,
            }),
            EventBody::EscalationWithdrawn(EscalationWithdrawn {
                conversation: "conv-x".into(),
                reason: "declined".into(),
            }),
            EventBody::ConversationSummary(ConversationSummary {
                conversation: "conv-x".into(),
                lang: Lang::En,
                started_at: 0,
                ended_at: 2_000,
                visitor_turns: 1,
                intents: vec![],
                escalated: true,
                reason: "visitor_ended".into(),
                transcript: vec![],
            }),
            EventBody::OfflineMessage(OfflineMessage {
                conversation: "conv-x".into(),
                lang: Lang::En,
                name: "Mallory".into(),
                contact: "m@example.com".into(),
                message: "read me".into(),
            }),
        ],
        2_000,
    )
    .await;
    let chat = store.chat("conv-x").await.unwrap().unwrap();
    assert_eq!(chat.node_id, "branch-a");
    assert_eq!(
        chat.state, "waiting",
        "not closed or withdrawn by another node"
    );
    assert!(chat.visitor_present);
    assert_eq!(chat.rating, None);
    let texts: Vec<&str> = chat.lines.iter().map(|l| l.text.as_str()).collect();
    assert_eq!(texts, ["help please"]);
    assert!(
        store.tickets("", true).await.unwrap().is_empty(),
        "no ticket on a foreign conversation"
    );
    // The events are kept (and would be acknowledged), for the audit trail.
    let q = cloud_controller::store::events::EventQuery {
        node: Some("branch-b".into()),
        ..Default::default()
    };
    assert_eq!(store.events(q).await.unwrap().len(), 6);
    // The owner's own line still lands.
    ingest(store, "branch-a", vec![line("still here", 2)], 3_000).await;
    let chat = store.chat("conv-x").await.unwrap().unwrap();
    assert!(chat.lines.iter().any(|l| l.text == "still here"));
    token.cancel();
}
