//! The live-chat desk across a controller killed with SIGKILL, with real
//! processes and sockets: one chat mid-conversation, one assigned with
//! nothing said yet, one waiting. After the restart the agent's console gets
//! both of theirs back with their transcripts, a visitor line written during
//! the outage reaches the agent, the agent writes again (and a line resent
//! with its console id is delivered once), the dashboard counts the waiting
//! chat, and a colleague who logs in is offered it.

use std::path::Path;

use edgedesk_common::chat::{ChatState, Sender, ServerFrame};
use edgedesk_systest::process::*;
use edgedesk_systest::*;

fn controller_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_systest-cloud-controller"))
}

/// The next line the visitor sees (acks, typing and notices skipped).
async fn next_line(ws: &mut Ws) -> ServerFrame {
    loop {
        match recv(ws).await {
            ServerFrame::Ack { .. } | ServerFrame::Typing { .. } | ServerFrame::Notice { .. } => {
                continue;
            }
            other => return other,
        }
    }
}

/// A visitor's line to the agent (the bot is silent): sent and stored.
async fn tell(ws: &mut Ws, text: &str) {
    send(ws, &msg(text)).await;
    loop {
        if let ServerFrame::Ack { .. } = recv(ws).await {
            return;
        }
    }
}

async fn agent_line(ctl: &CtlProcess, console: &mut ConsoleWs, chat: &str, text: &str, id: &str) {
    let _ = ctl;
    console_send(
        console,
        serde_json::json!({ "type": "message", "chat": chat, "text": text, "client_id": id }),
    )
    .await;
    let ack = console_next(console, "ack").await;
    assert_eq!(ack["client_id"], id);
}

async fn expect_agent_says(ws: &mut Ws, text: &str) {
    let f = next_line(ws).await;
    assert!(
        matches!(&f, ServerFrame::Reply { from: Sender::Agent, text: t, .. } if t == text),
        "expected the agent's {text:?}, got {f:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_killed_with_live_chats_gives_every_chat_back() {
    let cdir = tempfile::tempdir().unwrap();
    let (http, mqtt) = (free_port(), free_port());
    let mut ctl = CtlProcess::start(controller_bin(), cdir.path(), http, mqtt, &[]).await;
    ctl.create_agent("grace", "agent", 2).await;
    ctl.create_agent("henry", "agent", 2).await;
    ctl.create_agent("sam", "supervisor", 1).await;
    let edir = tempfile::tempdir().unwrap();
    let mut c = ctl.node_config(&edir, "branch-r").await;
    c.cloud.ack_timeout_secs = 2;
    let node = TestNode::start(c).await;
    eventually(15, "node online", || ctl.node_online("branch-r")).await;
    let base = ctl.base();
    let cookie = console_login(&base, &ctl.ca_pem, "grace").await;
    let mut grace = console_socket(&base, &ctl.ca_pem, &cookie).await;

    // A: assigned and mid-conversation.
    let mut a = node.connect().await;
    let (_, chat_a) = escalate(&mut a).await;
    let assigned = console_next(&mut grace, "assigned").await;
    assert_eq!(assigned["chat"]["id"], chat_a.as_str());
    let f = next_line(&mut a).await;
    assert!(
        matches!(&f, ServerFrame::Reply { state: ChatState::WithAgent, text, .. } if text.contains("grace")),
        "{f:?}"
    );
    agent_line(&ctl, &mut grace, &chat_a, "Hello, I am Grace", "g-1").await;
    expect_agent_says(&mut a, "Hello, I am Grace").await;
    tell(&mut a, "my card is stuck").await;
    let line = console_next(&mut grace, "line").await;
    assert_eq!(line["line"]["text"], "my card is stuck");
    // B: assigned, nothing said yet. C: waits (grace is full).
    let mut b = node.connect().await;
    let (_, chat_b) = escalate(&mut b).await;
    let assigned = console_next(&mut grace, "assigned").await;
    assert_eq!(assigned["chat"]["id"], chat_b.as_str());
    let mut c = node.connect().await;
    let (_, chat_c) = escalate(&mut c).await;

    ctl.kill();
    // During the outage the visitor writes; the node keeps the line.
    tell(&mut a, "are you still there?").await;
    ctl.restart().await;
    eventually(20, "node online again", || ctl.node_online("branch-r")).await;

    // The agent's page reconnects with its cookie: both chats come back
    // with their transcripts.
    let mut grace = console_socket(&base, &ctl.ca_pem, &cookie).await;
    let mut back = std::collections::HashMap::new();
    for _ in 0..2 {
        let v = console_next(&mut grace, "assigned").await;
        back.insert(
            v["chat"]["id"].as_str().unwrap().to_owned(),
            v["chat"].clone(),
        );
    }
    assert!(
        back.contains_key(&chat_a) && back.contains_key(&chat_b),
        "{back:?}"
    );
    let texts = |chat: &serde_json::Value| -> Vec<String> {
        chat["lines"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["text"].as_str().unwrap().to_owned())
            .collect()
    };
    let transcript = texts(&back[&chat_a]);
    assert!(
        transcript.contains(&"my card is stuck".to_owned())
            && transcript.contains(&"Hello, I am Grace".to_owned()),
        "{transcript:?}"
    );
    // The line written during the outage reaches the agent (in the
    // transcript if it was stored before the console came back, else live).
    if !transcript.contains(&"are you still there?".to_owned()) {
        let line = console_next(&mut grace, "line").await;
        assert_eq!(line["line"]["text"], "are you still there?");
    }

    // The agent writes again; a line the console resends with its id (it had
    // no answer before the kill) is not delivered twice.
    agent_line(&ctl, &mut grace, &chat_a, "Yes, I am here", "g-2").await;
    expect_agent_says(&mut a, "Yes, I am here").await;
    agent_line(&ctl, &mut grace, &chat_a, "Hello, I am Grace", "g-1").await;
    agent_line(&ctl, &mut grace, &chat_a, "Let us check your card", "g-3").await;
    expect_agent_says(&mut a, "Let us check your card").await;

    // The supervisor's dashboard counts the waiting chat.
    let sam = console_login(&base, &ctl.ca_pem, "sam").await;
    let dash: serde_json::Value = controller_http(&ctl.ca_pem)
        .get(format!("{base}/console/api/dashboard"))
        .header("cookie", sam)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(dash["live"]["waiting"], 1, "{dash}");

    // A colleague who logs in is offered the waiting chat.
    let mut henry = console_socket(
        &base,
        &ctl.ca_pem,
        &console_login(&base, &ctl.ca_pem, "henry").await,
    )
    .await;
    let v = console_next(&mut henry, "assigned").await;
    assert_eq!(v["chat"]["id"], chat_c.as_str());
    let f = next_line(&mut c).await;
    assert!(
        matches!(
            &f,
            ServerFrame::Reply {
                state: ChatState::WithAgent,
                ..
            }
        ),
        "{f:?}"
    );
    drop(b);
    node.stop().await;
}
