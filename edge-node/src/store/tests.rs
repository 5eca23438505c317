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
                id: format!("e{i}"),
                at: i,
                body: EventBody::Escalation(Escalation {
                    conversation: format!("c{i}"),
                    lang: Lang::En,
                    reason: "requested".into(),
                    last_text: "x".into(),
                    intents: vec![],
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
        id: "dup".into(),
        at: 1,
        body: EventBody::Escalation(Escalation {
            conversation: "c".into(),
            lang: Lang::En,
            reason: "requested".into(),
            last_text: String::new(),
            intents: vec![],
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
