//! Live handoff end to end with real parts: visitor (kiosk WebSocket) ↔ edge
//! node ↔ MQTT (sealed envelopes, embedded broker) ↔ controller ↔ agent
//! (console WebSocket, logged in with a session cookie).

use std::time::Duration;

use edgedesk_common::chat::{ChatState, Sender, ServerFrame};
use edgedesk_systest::cloud::*;
use edgedesk_systest::process::{console_next, console_send};
use edgedesk_systest::*;
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Next server frame that is not an ack.
async fn next_reply(ws: &mut Ws) -> ServerFrame {
    loop {
        match recv(ws).await {
            ServerFrame::Ack { .. } | ServerFrame::Typing { .. } => continue,
            other => return other,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn visitor_to_agent_and_back() {
    let cloud = Cloud::start().await;
    cloud.create_agent("grace", "Grace", &["en"], 2).await;
    let mut agent = cloud.console("grace").await;
    // A foreign page cannot open the console socket with the agent's cookie.
    let cookie = cloud.console_cookie("grace").await;
    let mut evil = format!("wss://{}/console/ws", cloud.ctl.http_addr)
        .into_client_request()
        .unwrap();
    evil.headers_mut().insert("cookie", cookie.parse().unwrap());
    evil.headers_mut()
        .insert("origin", "https://evil.example".parse().unwrap());
    let refused = wss_connect(evil, cloud.ca())
        .await
        .err()
        .unwrap_or_default();
    assert!(refused.contains("403"), "{refused}");
    let edir = tempfile::tempdir().unwrap();
    let node = edge(&cloud, &edir, "branch-h").await;

    // The visitor asks for a person.
    let mut visitor = node.connect().await;
    start_session(&mut visitor).await;
    say(&mut visitor, &msg("my card was swallowed by the ATM")).await;
    say(&mut visitor, &msg("I want to talk to a human")).await;

    // The agent receives the chat with the whole conversation so far…
    let assigned = console_next(&mut agent, "assigned").await;
    let chat = assigned["chat"]["id"].as_str().unwrap().to_owned();
    let texts: Vec<&str> = assigned["chat"]["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["text"].as_str().unwrap())
        .collect();
    assert!(
        texts.contains(&"my card was swallowed by the ATM"),
        "{texts:?}"
    );
    assert!(
        texts.iter().any(|t| t.contains("branch assistant")),
        "bot turns too: {texts:?}"
    );
    assert_eq!(assigned["chat"]["node_id"], "branch-h");
    // …and the visitor is told a person joined.
    let f = next_reply(&mut visitor).await;
    let ServerFrame::Reply {
        from, text, state, ..
    } = &f
    else {
        panic!("{f:?}")
    };
    assert_eq!((*from, *state), (Sender::System, ChatState::WithAgent));
    assert!(text.contains("Grace"), "{text}");

    // Agent → visitor.
    console_send(&mut agent, serde_json::json!({ "type": "message", "chat": chat, "text": "Hello, I'm Grace. Which ATM?" })).await;
    let f = next_reply(&mut visitor).await;
    assert!(
        matches!(&f, ServerFrame::Reply { from: Sender::Agent, text, .. } if text == "Hello, I'm Grace. Which ATM?"),
        "{f:?}"
    );
    // Typing indicators both ways.
    // Typing signals are ephemeral (best effort, QoS 0): the page repeats them
    // while the visitor types, and so does this test until one arrives.
    let mut seen = None;
    for _ in 0..10 {
        send(&mut visitor, &edgedesk_common::chat::ClientFrame::Typing).await;
        if let Ok(v) = tokio::time::timeout(
            Duration::from_millis(1000),
            console_next(&mut agent, "typing"),
        )
        .await
        {
            seen = Some(v);
            break;
        }
    }
    let typing = seen.expect("a typing signal reaches the agent");
    assert_eq!(typing["chat"], chat.as_str());
    let mut agent_typing = false;
    for _ in 0..10 {
        console_send(
            &mut agent,
            serde_json::json!({ "type": "typing", "chat": chat }),
        )
        .await;
        if let Ok(f) = tokio::time::timeout(Duration::from_millis(1000), recv(&mut visitor)).await {
            assert!(
                matches!(
                    f,
                    ServerFrame::Typing {
                        from: Sender::Agent
                    }
                ),
                "expected the agent's typing indicator, got {f:?}"
            );
            agent_typing = true;
            break;
        }
    }
    assert!(agent_typing, "a typing signal reaches the visitor");
    // Visitor → agent (the bot stays silent).
    send(&mut visitor, &msg("the one by the entrance <b>here</b>")).await;
    let line = console_next(&mut agent, "line").await;
    assert_eq!(line["line"]["text"], "the one by the entrance <b>here</b>");
    assert_eq!(line["chat"], chat.as_str());

    // Someone else's chat cannot be written to.
    console_send(
        &mut agent,
        serde_json::json!({ "type": "message", "chat": "not-mine", "text": "hi" }),
    )
    .await;
    let err = loop {
        let msg = tokio::time::timeout(FRAME_WAIT, agent.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Message::Text(t) = msg {
            let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
            if v["type"] == "error" {
                break v;
            }
        }
    };
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("not assigned to you")
    );

    // The agent closes; the visitor rates.
    console_send(&mut agent, serde_json::json!({ "type": "close", "chat": chat, "resolution": "card returned at the desk" })).await;
    console_next(&mut agent, "closed").await;
    let f = next_reply(&mut visitor).await;
    let ServerFrame::Reply {
        quick_replies,
        state,
        ..
    } = &f
    else {
        panic!("{f:?}")
    };
    assert_eq!(*state, ChatState::Bot);
    let four = quick_replies
        .iter()
        .find(|q| q.payload == "/rate 4")
        .expect("rating buttons");
    say(&mut visitor, &button(&four.label, &four.payload)).await;
    let store = cloud.ctl.store.clone();
    let mut rated = None;
    for _ in 0..100 {
        let view = store.chat(&chat).await.unwrap().unwrap();
        if view.rating.is_some() {
            rated = Some(view);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let view = rated.expect("the rating reaches the controller");
    assert_eq!(view.rating, Some(4));
    assert_eq!(view.state, "closed");
    assert_eq!(
        view.resolution.as_deref(),
        Some("card returned at the desk")
    );
    let senders: Vec<&str> = view.lines.iter().map(|l| l.sender.as_str()).collect();
    assert!(
        senders.contains(&"agent") && senders.contains(&"visitor") && senders.contains(&"bot"),
        "{senders:?}"
    );
    let found: Vec<String> = store
        .chats(cloud_controller::store::ChatFilter {
            q: Some("swallowed".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(
        found,
        vec![chat.clone()],
        "history search finds the transcript"
    );
    node.stop().await;
    cloud.token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_message_becomes_a_ticket() {
    let cloud = Cloud::start().await;
    let edir = tempfile::tempdir().unwrap();
    let node = edge(&cloud, &edir, "branch-t").await;
    let mut visitor = node.connect().await;
    start_session(&mut visitor).await;
    say(&mut visitor, &msg("I want to talk to a human")).await;
    say(&mut visitor, &button("Leave a message", "/leave_message")).await;
    say(&mut visitor, &msg("Ada")).await;
    say(&mut visitor, &msg("ada@example.com")).await;
    say(
        &mut visitor,
        &msg("Please call me about my lost card 4111 1111 1111 1111"),
    )
    .await;
    let store = cloud.ctl.store.clone();
    let mut ticket = None;
    for _ in 0..100 {
        let list = store.tickets("", true).await.unwrap();
        if let Some(t) = list.into_iter().next() {
            ticket = Some(t);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let t = ticket.expect("the offline message becomes a ticket");
    assert_eq!(
        (t.name.as_str(), t.contact.as_str(), t.state.as_str()),
        ("Ada", "ada@example.com", "open")
    );
    assert!(
        t.message.contains("[card]") && !t.message.contains("4111"),
        "card numbers masked: {}",
        t.message
    );
    node.stop().await;
    cloud.token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn branch_link_drops_mid_chat_and_nothing_typed_is_lost() {
    let broker_port = free_port();
    let proxy =
        edgedesk_systest::proxy::FaultProxy::start(format!("127.0.0.1:{broker_port}")).await;
    let cloud = Cloud::start_with(|c| {
        c.mqtt.listen = format!("127.0.0.1:{broker_port}");
        c.mqtt.advertise_port = proxy.port;
    })
    .await;
    cloud.create_agent("grace", "Grace", &["en"], 2).await;
    let mut agent = cloud.console("grace").await;
    let edir = tempfile::tempdir().unwrap();
    let node = edge(&cloud, &edir, "branch-l").await;
    let mut visitor = node.connect().await;
    start_session(&mut visitor).await;
    say(&mut visitor, &msg("I want to talk to a human")).await;
    let assigned = console_next(&mut agent, "assigned").await;
    let chat = assigned["chat"]["id"].as_str().unwrap().to_owned();
    let _joined = next_reply(&mut visitor).await;

    // The branch's link drops.
    proxy.cut();
    let status = console_next(&mut agent, "node_status").await;
    assert_eq!(
        status["online"], false,
        "the agent sees the branch go offline"
    );
    let notice = loop {
        match recv(&mut visitor).await {
            ServerFrame::Notice { code, .. } => break code,
            _ => continue,
        }
    };
    assert_eq!(
        notice, "agent_reconnecting",
        "the visitor is told the agent is reconnecting"
    );
    // Both keep typing.
    console_send(
        &mut agent,
        serde_json::json!({ "type": "message", "chat": chat, "text": "first while down" }),
    )
    .await;
    console_send(
        &mut agent,
        serde_json::json!({ "type": "message", "chat": chat, "text": "second while down" }),
    )
    .await;
    send(&mut visitor, &msg("are you still there?")).await;
    assert!(
        matches!(recv(&mut visitor).await, ServerFrame::Ack { .. }),
        "the visitor's line is stored locally"
    );

    // The link returns: everything arrives, in order.
    proxy.restore();
    let line = console_next(&mut agent, "line").await;
    assert_eq!(line["line"]["text"], "are you still there?");
    let mut got = Vec::new();
    while got.len() < 2 {
        if let ServerFrame::Reply {
            from: Sender::Agent,
            text,
            ..
        } = recv(&mut visitor).await
        {
            got.push(text);
        }
    }
    assert_eq!(got, vec!["first while down", "second while down"]);
    node.stop().await;
    cloud.token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_transfers_a_chat_to_a_colleague() {
    let cloud = Cloud::start().await;
    cloud.create_agent("grace", "Grace", &["en"], 1).await;
    let mut grace = cloud.console("grace").await;
    let edir = tempfile::tempdir().unwrap();
    let node = edge(&cloud, &edir, "branch-x").await;
    let mut visitor = node.connect().await;
    start_session(&mut visitor).await;
    say(&mut visitor, &msg("I want to talk to a human")).await;
    let assigned = console_next(&mut grace, "assigned").await;
    let chat = assigned["chat"]["id"].as_str().unwrap().to_owned();
    let _ = next_reply(&mut visitor).await; // Grace has joined
    // A colleague comes online; Grace hands the chat over.
    cloud.create_agent("alan", "Alan", &["en"], 1).await;
    let mut alan = cloud.console("alan").await;
    let alan_id = loop {
        let r = cloud
            .http
            .get(cloud.url("/api/v1/agents"))
            .bearer_auth(&cloud.ctl.admin_token)
            .send()
            .await
            .unwrap();
        let list: serde_json::Value = r.json().await.unwrap();
        if let Some(a) = list
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["username"] == "alan")
        {
            break a["id"].as_str().unwrap().to_owned();
        }
    };
    // Wait until Alan shows as an online colleague of Grace's.
    let cookie = cloud.console_cookie("grace").await;
    loop {
        let r = cloud
            .http
            .get(cloud.url("/console/api/colleagues"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        let list: serde_json::Value = r.json().await.unwrap();
        if list
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["id"] == alan_id.as_str() && c["free"] == 1)
        {
            break;
        }
        tokio::task::yield_now().await;
    }
    console_send(
        &mut grace,
        serde_json::json!({ "type": "transfer", "chat": chat, "to": alan_id }),
    )
    .await;
    let left = console_next(&mut grace, "requeued").await;
    assert_eq!(left["chat"], chat.as_str());
    let got = console_next(&mut alan, "assigned").await;
    assert_eq!(got["chat"]["id"], chat.as_str());
    let f = next_reply(&mut visitor).await;
    assert!(
        matches!(&f, ServerFrame::Reply { text, .. } if text.contains("Alan")),
        "{f:?}"
    );
    // Grace can no longer write to it; Alan can.
    console_send(
        &mut grace,
        serde_json::json!({ "type": "message", "chat": chat, "text": "still me" }),
    )
    .await;
    let err = console_next(&mut grace, "error").await;
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("not assigned to you")
    );
    console_send(
        &mut alan,
        serde_json::json!({ "type": "message", "chat": chat, "text": "Hi, Alan here." }),
    )
    .await;
    let f = next_reply(&mut visitor).await;
    assert!(
        matches!(&f, ServerFrame::Reply { from: Sender::Agent, text, .. } if text == "Hi, Alan here."),
        "{f:?}"
    );
    node.stop().await;
    cloud.token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversations_the_bot_handled_alone_reach_history_search() {
    let cloud = Cloud::start().await;
    cloud.create_agent("grace", "Grace", &["en"], 2).await;
    cloud
        .create_account("sam", "Sam", "supervisor", &["en"], 1)
        .await;
    let edir = tempfile::tempdir().unwrap();
    let node = edge(&cloud, &edir, "branch-h").await;
    let mut visitor = node.connect().await;
    start_session(&mut visitor).await;
    say(
        &mut visitor,
        &msg("When will my new card arrive? my number is 4111 1111 1111 1111"),
    )
    .await;
    say(&mut visitor, &button("Goodbye", "/end")).await;
    let chats = |user: &'static str, query: &'static str| {
        let cloud = &cloud;
        async move {
            let cookie = cloud.console_cookie(user).await;
            let r = cloud
                .http
                .get(cloud.url(&format!("/console/api/chats?{query}")))
                .header("cookie", cookie)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Vec<serde_json::Value>>().await.unwrap()
        }
    };
    let mut found = Vec::new();
    for _ in 0..100 {
        found = chats("sam", "q=card%20arrive&escalated=false").await;
        if !found.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(found.len(), 1, "the summary's transcript is searchable");
    assert_eq!(found[0]["node_id"], "branch-h");
    assert_eq!(found[0]["escalated"], false);
    assert!(
        chats("sam", "q=card%20arrive&escalated=true")
            .await
            .is_empty(),
        "the escalated filter excludes it"
    );
    assert!(
        chats("grace", "q=card%20arrive").await.is_empty(),
        "an agent sees only their own chats"
    );
    let id = found[0]["id"].as_str().unwrap().to_owned();
    let view = cloud.ctl.store.chat(&id).await.unwrap().unwrap();
    let senders: Vec<&str> = view.lines.iter().map(|l| l.sender.as_str()).collect();
    assert!(
        senders.contains(&"visitor") && senders.contains(&"bot"),
        "{senders:?}"
    );
    let all: String = view.lines.iter().map(|l| l.text.as_str()).collect();
    assert!(
        !all.contains("4111"),
        "card numbers are masked before leaving the branch: {all}"
    );
    let stored = cloud.events("kind=conversation_summary").await;
    assert!(!stored.is_empty());
    assert!(
        stored
            .iter()
            .all(|e| e["event"]["conversation"].is_string()
                && e["event"].get("transcript").is_none()),
        "the event log keeps the summary without a second copy of the transcript"
    );
    node.stop().await;
    cloud.token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_line_lost_in_flight_is_not_overtaken_by_the_next() {
    // The periodic resend is pushed out of the test's reach, so the lost
    // line can only come back through the node's gap-driven resend request.
    let cloud = Cloud::start_with(|c| c.sync.command_retry_secs = 3600).await;
    cloud.create_agent("grace", "Grace", &["en"], 2).await;
    let mut agent = cloud.console("grace").await;
    let edir = tempfile::tempdir().unwrap();
    let node = edge(&cloud, &edir, "branch-o").await;
    let mut visitor = node.connect().await;
    start_session(&mut visitor).await;
    say(&mut visitor, &msg("I want to talk to a human")).await;
    let assigned = console_next(&mut agent, "assigned").await;
    let chat = assigned["chat"]["id"].as_str().unwrap().to_owned();
    let f = next_reply(&mut visitor).await;
    assert!(
        matches!(
            &f,
            ServerFrame::Reply {
                from: Sender::System,
                ..
            }
        ),
        "{f:?}"
    );
    // A line queued and marked sent, but lost on the way (never published).
    let lost = edgedesk_common::sync::Command {
        trace: None,
        id: "lost-line".into(),
        body: edgedesk_common::sync::CommandBody::AgentMessage(
            edgedesk_common::sync::AgentMessage {
                conversation: chat.clone(),
                agent_name: "Grace".into(),
                text: "first line".into(),
            },
        ),
        issued_at: cloud_controller::downlink::now_ms(),
        stream: Some(edgedesk_common::sync::Stream {
            key: chat.clone(),
            seq: 0,
        }),
    };
    let queued = cloud
        .ctl
        .store
        .enqueue_command("branch-o", lost, Some(cloud_controller::downlink::now_ms()))
        .await
        .unwrap();
    assert_eq!(queued.stream.unwrap().seq, 2, "after agent_joined");
    // The next line goes out at once; the node sees the gap and asks again.
    console_send(
        &mut agent,
        serde_json::json!({ "type": "message", "chat": chat, "text": "second line" }),
    )
    .await;
    let mut got = Vec::new();
    while got.len() < 2 {
        if let ServerFrame::Reply {
            from: Sender::Agent,
            text,
            ..
        } = next_reply(&mut visitor).await
        {
            got.push(text);
        }
    }
    assert_eq!(got, vec!["first line", "second line"]);
    let (_, metrics) = node.get("/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("edgedesk_uplink_command_gaps_total") && !l.ends_with(" 0")),
        "the gap was counted"
    );
    node.stop().await;
    cloud.token.cancel();
}

/// Issue 11, finding 5: a visitor whose page stops reading (a frozen tab, a
/// script) must not freeze the branch's link. The visitor's socket has a tiny
/// receive window and is never read after the agent is assigned; the agent
/// then sends long lines, and a `ping` to the node is still acknowledged
/// within a second. The slow visitor's conversation is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visitor_who_never_reads_does_not_freeze_the_branch_link() {
    // The suite's 3 s heartbeat timeout could call the branch offline while
    // its node is busy storing the slow visitor's lines; this test is about
    // the link, so give presence a production-like margin.
    let cloud = Cloud::start_with(|c| c.fleet.heartbeat_timeout_secs = 30).await;
    cloud.create_agent("sam", "Sam", &["en"], 1).await;
    let mut agent = cloud.console("sam").await;
    let edir = tempfile::tempdir().unwrap();
    let node = edge(&cloud, &edir, "branch-slow").await;
    let mut visitor = connect_slow_reader(node.addr, &node.ws_url()).await;
    let (_, conversation) = escalate(&mut visitor).await;
    let assigned = console_next(&mut agent, "assigned").await;
    let chat = assigned["chat"]["id"].as_str().unwrap().to_owned();
    assert_eq!(chat, conversation);
    // From here on the visitor reads nothing. Long lines fill its window
    // and the node's send buffer. The agent's console reads as a page does.
    use futures_util::SinkExt;
    let (mut agent_tx, mut agent_rx) = agent.split();
    let reader = tokio::spawn(async move { while let Some(Ok(_)) = agent_rx.next().await {} });
    const LINES: usize = 30;
    let line = "我们正在核对您的账户信息，请稍候。".repeat(110);
    assert!(line.chars().count() <= 2000);
    for i in 0..LINES {
        let frame =
            serde_json::json!({ "type": "message", "chat": chat, "text": format!("{i} {line}") });
        agent_tx
            .send(Message::text(frame.to_string()))
            .await
            .unwrap();
    }
    // Wait until the controller has taken the whole burst (every line stored
    // and queued as a command: its own disk work is done) and the node is
    // busy with it (the first lines acknowledged, later ones still pending:
    // the visitor's lane is stuck on the socket).
    eventually(
        20,
        "the controller took every line and the node is busy",
        || async {
            let stored = cloud.ctl.store.chat(&chat).await.unwrap().map_or(0, |c| {
                c.lines.iter().filter(|l| l.sender == "agent").count()
            });
            let cmds = cloud.commands("branch-slow").await;
            let lines: Vec<_> = cmds
                .iter()
                .filter(|c| c["kind"] == "agent_message")
                .collect();
            stored == LINES
                && lines.len() == LINES
                && lines.iter().any(|c| !c["acked_at"].is_null())
                && lines.iter().any(|c| c["acked_at"].is_null())
        },
    )
    .await;
    // The ping must overtake the stuck lines: when it is acknowledged, agent
    // lines sent before it are still pending. (Before the fix the node's
    // one command loop waited on the slow socket, so the ping came back only
    // after every line: 5.9 s for 30 lines. The property is the order, not a
    // time, which a busy CI box stretches.)
    let id = cloud.ping("branch-slow").await;
    let sent = std::time::Instant::now();
    let (acked, pending, row) = loop {
        let cmds = cloud.commands("branch-slow").await;
        let c = cmds
            .iter()
            .find(|c| c["id"] == id.as_str())
            .cloned()
            .unwrap();
        if !c["acked_at"].is_null() {
            let pending = cmds
                .iter()
                .filter(|c| c["kind"] == "agent_message" && c["acked_at"].is_null())
                .count();
            break (sent.elapsed(), pending, c);
        }
        if sent.elapsed() > Duration::from_secs(30) {
            panic!("the ping was never acknowledged: {c}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        pending > 0,
        "the ping waited for the slow visitor's lines: acknowledged after {acked:?} with none pending: {row}"
    );
    // The slow visitor's conversation is kept: every line is stored on the
    // node in the end, whether the socket took it or was dropped.
    eventually(60, "every agent line is acknowledged", || async {
        cloud
            .commands("branch-slow")
            .await
            .iter()
            .filter(|c| c["kind"] == "agent_message")
            .all(|c| c["ok"] == true)
    })
    .await;
    drop(visitor);
    reader.abort();
}
