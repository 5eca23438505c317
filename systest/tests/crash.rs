//! Durability: a real `edge-node` process killed with SIGKILL mid-conversation
//! loses nothing that was acknowledged to the visitor.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use edgedesk_common::chat::ServerFrame;
use edgedesk_systest::*;
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

fn spawn_node(dir: &tempfile::TempDir, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_systest-edge-node"))
        .arg("serve")
        .env("EDGEDESK_SERVER__LISTEN", format!("\"127.0.0.1:{port}\""))
        .env(
            "EDGEDESK_STORE__PATH",
            format!("{:?}", dir.path().join("edge.db").to_string_lossy()),
        )
        .env(
            "EDGEDESK_NLU__BUNDLE",
            format!("{:?}", bundle_dir().to_string_lossy()),
        )
        .env("EDGEDESK_SERVER__RATE_LIMIT_PER_SEC", "1000.0")
        .env("EDGEDESK_SERVER__RATE_LIMIT_BURST", "1000")
        .env("EDGEDESK_SERVER__HISTORY_LIMIT", "1000")
        .env("ORT_DYLIB_PATH", ort_path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("edge-node binary starts")
}

async fn wait_ready(port: u16) {
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok()
            && http_get(addr, "/readyz").await.0 == 200
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("node on port {port} never became ready");
}

#[tokio::test]
async fn kill_9_mid_conversation_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = spawn_node(&dir, port);
    wait_ready(port).await;
    let url = format!("ws://127.0.0.1:{port}/ws");
    let mut ws = connect_url(&url, None).await;
    let (token, _) = start_session(&mut ws).await;

    // Pipeline messages without waiting, note every acknowledged id, and kill
    // the process while frames are still in flight.
    let total = 200;
    for i in 0..total {
        send(&mut ws, &msg(&format!("message number {i}"))).await;
    }
    let mut acked = Vec::new();
    while acked.len() < 60 {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                if let ServerFrame::Ack {
                    client_id: Some(c), ..
                } = serde_json::from_str(t.as_str()).unwrap()
                {
                    acked.push(c);
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
    // Whatever else arrived before the socket died was acknowledged too.
    while let Ok(Some(Ok(Message::Text(t)))) =
        tokio::time::timeout(Duration::from_millis(200), ws.next()).await
    {
        if let Ok(ServerFrame::Ack {
            client_id: Some(c), ..
        }) = serde_json::from_str(t.as_str())
        {
            acked.push(c);
        }
    }
    assert!(
        acked.len() < total,
        "the kill must land mid-stream (acked {})",
        acked.len()
    );

    let mut child = spawn_node(&dir, port);
    wait_ready(port).await;
    let mut ws = connect_url(&url, None).await;
    send(&mut ws, &hello(Some(&token))).await;
    let ServerFrame::Welcome {
        history, resumed, ..
    } = recv(&mut ws).await
    else {
        panic!()
    };
    assert!(resumed, "the session survives the crash");
    let stored: std::collections::HashSet<String> =
        history.iter().map(|h| h.text.clone()).collect();
    for c in &acked {
        let text = c.strip_prefix("c-").unwrap();
        assert!(
            stored.contains(text),
            "acknowledged {text:?} was lost after kill -9"
        );
    }
    // History is in order: visitor line i is followed by its reply.
    let visitor: Vec<&str> = history
        .iter()
        .filter(|h| h.text.starts_with("message number"))
        .map(|h| h.text.as_str())
        .collect();
    for (i, t) in visitor.iter().enumerate() {
        assert_eq!(*t, format!("message number {i}"));
    }
    child.kill().unwrap();
    child.wait().unwrap();
}
