//! Store tests against real SQLite files.

use super::*;
use edgedesk_common::chat::Lang;
use edgedesk_common::event::{Escalation, OfflineMessage};

fn cfg(dir: &tempfile::TempDir) -> StoreConfig {
    StoreConfig {
        path: dir.path().join("sub/edge.db"),
        synchronous: Synchronous::Full,
        batch_max: 64,
        queue_capacity: 128,
    }
}

fn write(session: &str, conv: &str, at: i64, texts: &[&str]) -> TurnWrite {
    TurnWrite {
        session: SessionRow {
            id: session.into(),
            token_hash: format!("hash-{session}"),
            created_at: 0,
            last_seen: at,
            conversation_id: conv.into(),
            state: "{}".into(),
        },
        conversation_start: Some(("en".into(), at)),
        conversation_end: None,
        escalated: false,
        messages: texts
            .iter()
            .map(|t| NewMessage {
                sender: Sender::Visitor,
                text: (*t).into(),
                quick_replies: vec![],
                intent: None,
                confidence: None,
                at,
                author: None,
            })
            .collect(),
        events: vec![],
    }
}

#[tokio::test]
async fn commit_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let (store, thread) = Store::open(&cfg(&dir)).unwrap();
    let mut w = write("s1", "c1", 10, &["hello", "你好"]);
    w.messages[1].sender = Sender::Bot;
    w.messages[1].quick_replies = vec![QuickReply {
        label: "Yes".into(),
        payload: "/yes".into(),
    }];
    w.events.push(Event {
        trace: None,
        id: "e1".into(),
        at: 10,
        body: EventBody::OfflineMessage(OfflineMessage {
            conversation: "c1".into(),
            lang: Lang::En,
            name: "Ada".into(),
            contact: "+441".into(),
            message: "call me".into(),
        }),
    });
    let ids = store.commit(w).await.unwrap();
    assert_eq!(ids.len(), 2);
    assert!(ids[0] < ids[1]);
    let s = store
        .session_by_token_hash("hash-s1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s.conversation_id, "c1");
    assert!(store.session_by_token_hash("nope").await.unwrap().is_none());
    let h = store.history("c1", 10).await.unwrap();
    assert_eq!(
        h.iter().map(|i| i.text.as_str()).collect::<Vec<_>>(),
        vec!["hello", "你好"]
    );
    assert_eq!(h[1].quick_replies[0].payload, "/yes");
    assert_eq!(
        store.history("c1", 1).await.unwrap()[0].text,
        "你好",
        "limit keeps the newest"
    );
    assert_eq!(store.outbox_depth().await.unwrap(), 1);
    assert_eq!(store.outbox_peek(10).await.unwrap()[0].event.id, "e1");
    drop(store);
    thread.join();
}

#[tokio::test]
async fn concurrent_turns_group_commit_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(&dir);
    let (store, thread) = Store::open(&c).unwrap();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut w = write(&format!("s{i}"), &format!("c{i}"), i, &["m"]);
            w.events.push(Event {
                trace: None,
                id: format!("e{i}"),
                at: i,
                body: EventBody::Escalation(Escalation {
                    conversation: format!("c{i}"),
                    lang: Lang::En,
                    reason: "requested".into(),
                    last_text: "x".into(),
                    intents: vec![],
                    transcript: vec![],
                }),
            });
            s.commit(w).await.unwrap()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().len(), 1);
    }
    drop(store);
    thread.join();
    let (store, thread) = Store::open(&c).unwrap();
    assert_eq!(store.outbox_depth().await.unwrap(), 200);
    assert_eq!(store.history("c199", 10).await.unwrap().len(), 1);
    drop(store);
    thread.join();
}

#[tokio::test]
async fn duplicate_event_id_rolls_back_the_whole_turn() {
    let dir = tempfile::tempdir().unwrap();
    let (store, thread) = Store::open(&cfg(&dir)).unwrap();
    let ev = Event {
        trace: None,
        id: "dup".into(),
        at: 1,
        body: EventBody::Escalation(Escalation {
            conversation: "c".into(),
            lang: Lang::En,
            reason: "requested".into(),
            last_text: String::new(),
            intents: vec![],
            transcript: vec![],
        }),
    };
    let mut w = write("s", "c", 1, &["first"]);
    w.events.push(ev.clone());
    store.commit(w).await.unwrap();
    let mut w = write("s", "c", 2, &["second"]);
    w.events.push(ev);
    assert!(store.commit(w).await.is_err());
    let h = store.history("c", 10).await.unwrap();
    assert_eq!(
        h.len(),
        1,
        "the failed turn's message must not be stored: {h:?}"
    );
    drop(store);
    thread.join();
}

#[tokio::test]
async fn retention_deletes_only_old_transcripts() {
    let dir = tempfile::tempdir().unwrap();
    let (store, thread) = Store::open(&cfg(&dir)).unwrap();
    let mut old = write("old", "c-old", 100, &["a", "b"]);
    old.conversation_end = Some((150, "goodbye".into()));
    store.commit(old).await.unwrap();
    store
        .commit(write("new", "c-new", 10_000, &["c"]))
        .await
        .unwrap();
    let stats = store.enforce_retention(1_000).await.unwrap();
    assert_eq!(stats.messages, 2);
    assert_eq!(stats.conversations, 1);
    assert_eq!(stats.sessions, 1);
    assert!(store.history("c-old", 10).await.unwrap().is_empty());
    assert_eq!(store.history("c-new", 10).await.unwrap().len(), 1);
    drop(store);
    thread.join();
}

#[tokio::test]
async fn idle_sessions_lists_only_open_conversations() {
    let dir = tempfile::tempdir().unwrap();
    let (store, thread) = Store::open(&cfg(&dir)).unwrap();
    store.commit(write("a", "ca", 100, &["x"])).await.unwrap();
    let mut ended = write("b", "cb", 100, &["x"]);
    ended.conversation_end = Some((100, "goodbye".into()));
    store.commit(ended).await.unwrap();
    store.commit(write("c", "cc", 5_000, &["x"])).await.unwrap();
    let idle = store.idle_sessions(1_000, 10).await.unwrap();
    assert_eq!(
        idle.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        vec!["a"]
    );
    drop(store);
    thread.join();
}

#[test]
fn newer_schema_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(&dir);
    std::fs::create_dir_all(c.path.parent().unwrap()).unwrap();
    let conn = Connection::open(&c.path).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    let err = Store::open(&c).err().unwrap();
    assert!(err.to_string().contains("newer than this build"), "{err}");
}

#[test]
fn unwritable_path_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let mut c = cfg(&dir);
    c.path = file.join("edge.db");
    let err = Store::open(&c).err().unwrap();
    assert!(matches!(err, StoreError::Open { .. }), "{err}");
}

#[tokio::test]
async fn outbox_budget_drops_only_old_summaries() {
    use edgedesk_common::event::ConversationSummary;
    let dir = tempfile::tempdir().unwrap();
    let (store, thread) = Store::open(&cfg(&dir)).unwrap();
    let summary = |i: i64| Event {
        trace: None,
        id: format!("s{i}"),
        at: i,
        body: EventBody::ConversationSummary(ConversationSummary {
            conversation: format!("c{i}"),
            lang: Lang::En,
            started_at: 0,
            ended_at: i,
            visitor_turns: 1,
            intents: vec!["greeting".into(); 20],
            escalated: false,
            reason: "goodbye".into(),
            transcript: Vec::new(),
        }),
    };
    let escalation = |i: i64| Event {
        trace: None,
        id: format!("e{i}"),
        at: i,
        body: EventBody::Escalation(Escalation {
            conversation: format!("c{i}"),
            lang: Lang::En,
            reason: "requested".into(),
            last_text: "x".repeat(200),
            intents: vec![],
            transcript: vec![],
        }),
    };
    for i in 0..20 {
        let mut w = write("s", "c", i, &[]);
        w.conversation_start = None;
        w.events = vec![summary(i), escalation(i)];
        store.commit(w).await.unwrap();
    }
    let all = store.outbox_compact(u64::MAX).await.unwrap();
    assert_eq!(all.dropped, 0);
    let c = store.outbox_compact(all.bytes / 2).await.unwrap();
    assert!(c.dropped > 0 && c.bytes <= all.bytes / 2, "{c:?}");
    let left = store.outbox_peek(100).await.unwrap();
    assert_eq!(
        left.iter()
            .filter(|e| e.event.body.kind() == "escalation")
            .count(),
        20,
        "escalations are never dropped"
    );
    // The oldest summaries went first.
    let first_summary = left
        .iter()
        .find(|e| e.event.body.kind() == "conversation_summary")
        .unwrap();
    assert_eq!(first_summary.event.id, format!("s{}", c.dropped));
    // A budget below the escalations alone cannot be met, and they stay.
    let c2 = store.outbox_compact(1).await.unwrap();
    assert_eq!(c2.dropped_total, 20);
    assert_eq!(store.outbox_depth().await.unwrap(), 20);
    // Acknowledged events leave.
    assert_eq!(
        store
            .outbox_delete(vec!["e0".into(), "e1".into(), "nope".into()])
            .await
            .unwrap(),
        2
    );
    assert_eq!(store.outbox_depth().await.unwrap(), 18);
    drop(store);
    thread.join();
}

#[tokio::test]
async fn commands_execute_once_and_kv_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let (store, thread) = Store::open(&cfg(&dir)).unwrap();
    let c = CommandIn {
        id: "k".into(),
        kind: "ping".into(),
        args: "{}".into(),
        received_at: 1,
        ok: true,
        detail: "pong".into(),
        stream: Some(("conv-1".into(), 1)),
    };
    assert_eq!(store.stream_seq("conv-1").await.unwrap(), 0);
    assert_eq!(store.command_in(c.clone()).await.unwrap(), None);
    assert_eq!(
        store.command_in(c).await.unwrap(),
        Some((true, "pong".into()))
    );
    assert_eq!(
        store.stream_seq("conv-1").await.unwrap(),
        1,
        "recorded with the command"
    );
    assert_eq!(store.kv_get("x").await.unwrap(), None);
    store.kv_set("x", "1").await.unwrap();
    store.kv_set("x", "2").await.unwrap();
    assert_eq!(store.kv_get("x").await.unwrap().as_deref(), Some("2"));
    drop(store);
    thread.join();
}
