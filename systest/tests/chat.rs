//! End-to-end chat over the real protocol: a real node (ONNX Runtime, SQLite)
//! on 127.0.0.1:0 and a real WebSocket client.

use edgedesk_common::chat::{ChatState, ClientFrame, ErrorCode, Lang, Sender, ServerFrame};
use edgedesk_common::event::EventBody;
use edgedesk_systest::*;

#[tokio::test]
async fn page_health_ready_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(config(&dir)).await;
    let (status, page) = node.get("/").await;
    assert_eq!(status, 200);
    assert!(
        page.contains("content-security-policy"),
        "CSP header missing"
    );
    assert!(page.contains("<script src=\"/app.js\"></script>"));
    assert!(!page.contains("https://"), "no CDN references");
    let (status, js) = node.get("/app.js").await;
    assert_eq!(status, 200);
    assert!(
        js.contains("textContent") && !js.contains("innerHTML"),
        "chat text must never be parsed as HTML"
    );
    assert_eq!(node.get("/healthz").await.0, 200);
    let (status, ready) = node.get("/readyz").await;
    assert_eq!(status, 200, "{ready}");
    assert!(ready.contains("edgedesk-intents"));

    let mut ws = node.connect().await;
    start_session(&mut ws).await;
    say(&mut ws, &msg("I lost my card")).await;
    let (_, metrics) = node.get("/metrics").await;
    for name in [
        "edgedesk_ws_connections",
        "edgedesk_sessions_total{kind=\"new\"} 1",
        "edgedesk_messages_total{direction=\"in\"} 1",
        "edgedesk_intents_total{intent=\"lost_or_stolen_card\"} 1",
        "edgedesk_nlu_latency_seconds_bucket",
        // One turn: the model's time and the wait before it, each counted once.
        "edgedesk_nlu_latency_seconds_count 1",
        "edgedesk_nlu_wait_seconds_count 1",
        "edgedesk_escalations_total",
        "edgedesk_rejected_inputs_total{reason=\"too_large\"} 0",
    ] {
        assert!(metrics.contains(name), "metrics lack {name}:\n{metrics}");
    }
    node.stop().await;
}

#[tokio::test]
async fn answers_from_the_knowledge_base_in_both_languages() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(config(&dir)).await;
    let mut ws = node.connect().await;
    let (_, welcome) = start_session(&mut ws).await;
    let ServerFrame::Welcome {
        history,
        resumed,
        state,
        ..
    } = welcome
    else {
        unreachable!()
    };
    assert!(!resumed);
    assert_eq!(state, ChatState::Bot);
    assert_eq!(history.len(), 1, "the welcome line is stored");
    assert_eq!(history[0].from, Sender::Bot);

    let (_, replies) = say(&mut ws, &msg("my new card still hasn't arrived")).await;
    let ServerFrame::Reply {
        intent, lang, text, ..
    } = &replies[0]
    else {
        panic!()
    };
    assert_eq!(intent.as_deref(), Some("card_arrival"));
    assert_eq!(*lang, Lang::En);
    assert!(text.contains("working days"), "{text}");

    let (_, replies) = say(&mut ws, &msg("新卡什么时候寄到")).await;
    let ServerFrame::Reply { lang, text, .. } = &replies[0] else {
        panic!()
    };
    assert_eq!(*lang, Lang::Zh);
    assert!(text.contains("工作日"), "{text}");
    node.stop().await;
}

#[tokio::test]
async fn appointment_flow_over_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(config(&dir)).await;
    let mut ws = node.connect().await;
    start_session(&mut ws).await;
    let (_, r) = say(&mut ws, &msg("I want to book an appointment")).await;
    assert!(reply_text(&r[0]).contains("Which day"), "{r:?}");
    let ServerFrame::Reply { state, .. } = &r[0] else {
        panic!()
    };
    assert_eq!(*state, ChatState::InFlow);
    let (_, r) = say(&mut ws, &msg("2099-03-02")).await;
    assert!(reply_text(&r[0]).contains("What time"), "{r:?}");
    let (_, r) = say(&mut ws, &msg("10:30")).await;
    assert!(reply_text(&r[0]).contains("2099-03-02 at 10:30"), "{r:?}");
    let ServerFrame::Reply { quick_replies, .. } = &r[0] else {
        panic!()
    };
    assert_eq!(quick_replies[0].payload, "/yes");
    let (_, r) = say(&mut ws, &button("Yes", "/yes")).await;
    assert!(reply_text(&r[0]).contains("booked"), "{r:?}");
    let outbox = node.store().outbox_peek(10).await.unwrap();
    assert!(
        outbox.iter().any(
            |e| matches!(&e.event.body, EventBody::FlowCompleted(f) if f.slots["time"] == "10:30")
        ),
        "{outbox:?}"
    );
    node.stop().await;
}

#[tokio::test]
async fn escalation_then_offline_message_reach_the_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(config(&dir)).await;
    let mut ws = node.connect().await;
    start_session(&mut ws).await;
    let (_, r) = say(&mut ws, &msg("I want to talk to a human")).await;
    let ServerFrame::Reply {
        state,
        quick_replies,
        ..
    } = &r[0]
    else {
        panic!()
    };
    assert_eq!(*state, ChatState::WaitingForAgent);
    assert_eq!(quick_replies[0].payload, "/leave_message");
    say(&mut ws, &button("Leave a message", "/leave_message")).await;
    say(&mut ws, &msg("Grace Hopper")).await;
    say(&mut ws, &msg("grace@example.com")).await;
    let (_, r) = say(&mut ws, &msg("Please call me about a mortgage")).await;
    assert!(reply_text(&r[0]).contains("grace@example.com"), "{r:?}");
    let kinds: Vec<&str> = node
        .store()
        .outbox_peek(10)
        .await
        .unwrap()
        .iter()
        .map(|e| e.event.body.kind())
        .collect();
    // Leaving a message takes the visitor out of the agents' queue.
    assert_eq!(
        kinds,
        vec!["escalation", "escalation_withdrawn", "offline_message"]
    );
    let (_, metrics) = node.get("/metrics").await;
    assert!(
        metrics.contains("edgedesk_escalations_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("edgedesk_offline_messages_total 1"),
        "{metrics}"
    );
    node.stop().await;
}

#[tokio::test]
async fn goodbye_ends_the_conversation_and_the_next_message_starts_another() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(config(&dir)).await;
    let mut ws = node.connect().await;
    start_session(&mut ws).await;
    say(&mut ws, &msg("hello")).await;
    let (_, r) = say(&mut ws, &msg("goodbye")).await;
    let ServerFrame::Reply { state, .. } = &r[0] else {
        panic!()
    };
    assert_eq!(*state, ChatState::Ended);
    let (_, r) = say(&mut ws, &msg("hello again")).await;
    let ServerFrame::Reply { state, .. } = &r[0] else {
        panic!()
    };
    assert_eq!(*state, ChatState::Bot);
    let outbox = node.store().outbox_peek(10).await.unwrap();
    let EventBody::ConversationSummary(s) = &outbox[0].event.body else {
        panic!("{outbox:?}")
    };
    assert_eq!(s.visitor_turns, 2);
    assert_eq!(s.reason, "goodbye");
    node.stop().await;
}

#[tokio::test]
async fn reconnect_and_restart_restore_the_conversation() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(config(&dir)).await;
    let mut ws = node.connect().await;
    let (token, _) = start_session(&mut ws).await;
    say(&mut ws, &msg("I lost my card")).await;
    say(&mut ws, &msg("4321")).await;
    drop(ws);

    // Reload: same token, same node.
    let mut ws = node.connect().await;
    send(&mut ws, &hello(Some(&token))).await;
    let ServerFrame::Welcome {
        resumed,
        history,
        state,
        session,
        ..
    } = recv(&mut ws).await
    else {
        panic!()
    };
    assert!(resumed);
    assert_eq!(session, token);
    assert_eq!(state, ChatState::InFlow, "mid-flow state survives");
    let texts: Vec<&str> = history.iter().map(|h| h.text.as_str()).collect();
    assert!(
        texts.contains(&"I lost my card") && texts.contains(&"4321"),
        "{texts:?}"
    );
    drop(ws);
    node.stop().await;

    // Restart: a new process state on the same database.
    let node = TestNode::start(config(&dir)).await;
    let mut ws = node.connect().await;
    send(&mut ws, &hello(Some(&token))).await;
    let ServerFrame::Welcome {
        resumed, history, ..
    } = recv(&mut ws).await
    else {
        panic!()
    };
    assert!(resumed);
    assert_eq!(
        history.len(),
        5,
        "welcome + 2 visitor lines + 2 bot lines: {history:?}"
    );
    // …and the flow continues where it was: confirming the block.
    let (_, r) = say(&mut ws, &button("Yes", "/yes")).await;
    assert!(reply_text(&r[0]).contains("4321"), "{r:?}");
    node.stop().await;
}

#[tokio::test]
async fn a_second_connection_takes_the_session_over() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(config(&dir)).await;
    let mut first = node.connect().await;
    let (token, _) = start_session(&mut first).await;
    let mut second = node.connect().await;
    send(&mut second, &hello(Some(&token))).await;
    assert!(matches!(
        recv(&mut second).await,
        ServerFrame::Welcome { resumed: true, .. }
    ));
    assert!(
        matches!(recv(&mut first).await, ServerFrame::Notice { code, .. } if code == "session_taken_over")
    );
    assert_eq!(recv_close(&mut first).await, Some(4001));
    say(&mut second, &msg("hello")).await;
    node.stop().await;
}

#[tokio::test]
async fn shutdown_closes_sockets_with_going_away() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(config(&dir)).await;
    let mut ws = node.connect().await;
    start_session(&mut ws).await;
    node.token.cancel();
    assert_eq!(recv_close(&mut ws).await, Some(1001));
    node.stop().await;
}

#[tokio::test]
async fn housekeeping_ends_idle_conversations_and_enforces_retention() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(config(&dir)).await;
    let mut ws = node.connect().await;
    let (token, welcome) = start_session(&mut ws).await;
    let ServerFrame::Welcome { conversation, .. } = welcome else {
        unreachable!()
    };
    say(&mut ws, &msg("hello")).await;
    // While connected, the session is live and housekeeping leaves it alone.
    let now = edge_node::session::now_ms();
    let pass = node.housekeeping(now + 3_600_000).await.unwrap();
    assert_eq!(pass.idle_closed, 0);
    drop(ws);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let pass = node.housekeeping(now + 3_600_000).await.unwrap();
    assert_eq!(pass.idle_closed, 1);
    assert_eq!(pass.outbox_depth, 1, "one idle summary");
    // A year later, the transcript is gone.
    let pass = node.housekeeping(now + 400 * 86_400_000).await.unwrap();
    assert!(pass.retention.messages >= 3, "{pass:?}");
    assert!(
        node.store()
            .history(&conversation, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let mut ws = node.connect().await;
    send(&mut ws, &hello(Some(&token))).await;
    assert!(matches!(
        recv(&mut ws).await,
        ServerFrame::Error {
            code: ErrorCode::UnknownSession,
            ..
        }
    ));
    node.stop().await;
}

#[tokio::test]
async fn set_lang_switches_replies_and_is_remembered() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(config(&dir)).await;
    let mut ws = node.connect().await;
    let (token, welcome) = start_session(&mut ws).await;
    let ServerFrame::Welcome { history, .. } = &welcome else {
        panic!()
    };
    let greeting = history[0].id;
    send(&mut ws, &ClientFrame::SetLang { lang: Lang::Zh }).await;
    // The greeting is rewritten in the chosen language, in place.
    let f = recv(&mut ws).await;
    assert!(
        matches!(&f, ServerFrame::Edit { id, text, .. } if *id == greeting && text.contains("您好")),
        "{f:?}"
    );
    let (_, r) = say(&mut ws, &msg("1234")).await; // no language in the text itself
    let ServerFrame::Reply { lang, .. } = &r[0] else {
        panic!()
    };
    assert_eq!(*lang, Lang::Zh);
    drop(ws);
    let mut ws = node.connect().await;
    send(&mut ws, &hello(Some(&token))).await;
    let ServerFrame::Welcome { lang, history, .. } = recv(&mut ws).await else {
        panic!()
    };
    assert_eq!(lang, Lang::Zh);
    assert!(
        history[0].text.contains("您好"),
        "the greeting stays Chinese after a reload: {history:?}"
    );
    node.stop().await;
}

#[tokio::test]
async fn offline_node_keeps_its_outbox_within_budget_without_losing_escalations() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(&dir);
    c.cloud.outbox_budget_bytes = 3_000;
    let node = TestNode::start(c).await;
    // Ten conversations that end (summaries) and three escalations.
    for i in 0..10 {
        let mut ws = node.connect().await;
        start_session(&mut ws).await;
        say(&mut ws, &msg("hello")).await;
        say(&mut ws, &msg(&format!("goodbye {i}"))).await;
    }
    for _ in 0..3 {
        let mut ws = node.connect().await;
        start_session(&mut ws).await;
        say(&mut ws, &msg("I want to talk to a human")).await;
    }
    let now = edge_node::session::now_ms();
    let pass = node.housekeeping(now).await.unwrap();
    assert!(pass.compacted > 0, "{pass:?}");
    let kinds: Vec<String> = node
        .store()
        .outbox_peek(100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event.body.kind().to_owned())
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| *k == "escalation").count(),
        3,
        "{kinds:?}"
    );
    assert!(
        kinds
            .iter()
            .filter(|k| *k == "conversation_summary")
            .count()
            < 10
    );
    let (_, metrics) = node.get("/metrics").await;
    assert!(
        metrics.contains(&format!("edgedesk_outbox_compacted {}", pass.compacted)),
        "{metrics}"
    );
    node.stop().await;
}

#[cfg(unix)]
#[tokio::test]
async fn the_node_database_is_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let c = config(&dir);
    let path = c.store.path.clone();
    let node = TestNode::start(c).await;
    let mut ws = node.connect().await;
    start_session(&mut ws).await;
    say(&mut ws, &msg("my card number is 4111 1111 1111 1111")).await;
    for p in [path.clone(), path.with_extension("db-wal")] {
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} is {mode:o}", p.display());
    }
    node.stop().await;
}
