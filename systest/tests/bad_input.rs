//! Every kind of bad input gets a clear error frame, close code or HTTP
//! status, leaves the server healthy, and loses nothing already stored.

use std::time::Duration;

use edgedesk_common::chat::{ClientFrame, ErrorCode, ServerFrame};
use edgedesk_systest::*;
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};

/// A node with one stored conversation; returns (node, its token, stored line count).
async fn node_with_history(
    dir: &tempfile::TempDir,
    tweak: impl FnOnce(&mut edge_node::config::Config),
) -> (TestNode, String) {
    let mut c = config(dir);
    tweak(&mut c);
    let node = TestNode::start(c).await;
    let mut ws = node.connect().await;
    let (token, _) = start_session(&mut ws).await;
    say(&mut ws, &msg("I lost my card")).await;
    (node, token)
}

/// The server still answers and the stored conversation is intact.
async fn assert_healthy_and_intact(node: &TestNode, token: &str) {
    assert_eq!(node.get("/healthz").await.0, 200);
    assert_eq!(node.get("/readyz").await.0, 200);
    let mut ws = node.connect().await;
    send(&mut ws, &hello(Some(token))).await;
    let ServerFrame::Welcome {
        history, resumed, ..
    } = recv(&mut ws).await
    else {
        panic!()
    };
    assert!(resumed);
    assert!(
        history.iter().any(|h| h.text == "I lost my card"),
        "{history:?}"
    );
}

async fn expect_error(ws: &mut Ws, code: ErrorCode) -> String {
    match recv(ws).await {
        ServerFrame::Error {
            code: c, message, ..
        } if c == code => message,
        other => panic!("expected error {code:?}, got {other:?}"),
    }
}

#[tokio::test]
async fn oversized_frame_is_refused_and_the_connection_stays_usable() {
    let dir = tempfile::tempdir().unwrap();
    let (node, token) = node_with_history(&dir, |_| {}).await;
    let mut ws = node.connect().await;
    send(&mut ws, &hello(Some(&token))).await;
    recv(&mut ws).await;
    let big = "x".repeat(5000);
    send(&mut ws, &msg(&big)).await;
    let m = expect_error(&mut ws, ErrorCode::TooLarge).await;
    assert!(m.contains("4096"), "{m}");
    say(&mut ws, &msg("cancel")).await; // still usable
    // Far beyond the hard cap the WebSocket layer closes the connection.
    let _ = ws.send(Message::text("y".repeat(200_000))).await;
    assert_eq!(recv_close(&mut ws).await, Some(1009), "not a reset");
    assert_healthy_and_intact(&node, &token).await;
    node.stop().await;
}

#[tokio::test]
async fn invalid_json_unknown_type_and_binary_frames() {
    let dir = tempfile::tempdir().unwrap();
    let (node, token) = node_with_history(&dir, |_| {}).await;
    let mut ws = node.connect().await;
    send(&mut ws, &hello(Some(&token))).await;
    recv(&mut ws).await;
    send_raw(&mut ws, "{not json").await;
    expect_error(&mut ws, ErrorCode::InvalidJson).await;
    send_raw(&mut ws, r#"{"type":"message"}"#).await;
    expect_error(&mut ws, ErrorCode::InvalidJson).await;
    // A lone surrogate escape is not valid Unicode.
    send_raw(&mut ws, r#"{"type":"message","text":"\udc00"}"#).await;
    expect_error(&mut ws, ErrorCode::InvalidJson).await;
    send_raw(&mut ws, r#"{"type":"launch_rockets"}"#).await;
    let m = expect_error(&mut ws, ErrorCode::UnknownType).await;
    assert!(m.contains("launch_rockets"), "{m}");
    ws.send(Message::binary(vec![0u8, 1, 2])).await.unwrap();
    expect_error(&mut ws, ErrorCode::BinaryNotSupported).await;
    say(&mut ws, &msg("hello")).await;
    assert_healthy_and_intact(&node, &token).await;
    let (_, metrics) = node.get("/metrics").await;
    assert!(
        metrics.contains("edgedesk_rejected_inputs_total{reason=\"invalid_json\"} 3"),
        "{metrics}"
    );
    node.stop().await;
}

#[tokio::test]
async fn invalid_utf8_text_frame_closes_only_that_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (node, token) = node_with_history(&dir, |_| {}).await;
    let mut ws = node.connect().await;
    send(&mut ws, &hello(Some(&token))).await;
    recv(&mut ws).await;
    let header = FrameHeader {
        opcode: OpCode::Data(Data::Text),
        is_final: true,
        ..Default::default()
    };
    let raw = Frame::from_payload(header, vec![0xff, 0xfe, b'h', b'i'].into());
    let _ = ws.send(Message::Frame(raw)).await;
    let code = recv_close(&mut ws).await;
    assert_eq!(
        code,
        Some(1007),
        "invalid UTF-8 closes with 1007, not a reset"
    );
    assert_healthy_and_intact(&node, &token).await;
    node.stop().await;
}

#[tokio::test]
async fn empty_and_whitespace_messages_are_refused_and_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let (node, token) = node_with_history(&dir, |_| {}).await;
    let mut ws = node.connect().await;
    send(&mut ws, &hello(Some(&token))).await;
    let ServerFrame::Welcome { history, .. } = recv(&mut ws).await else {
        panic!()
    };
    let before = history.len();
    for text in ["", "   ", "\n\t "] {
        send(&mut ws, &msg(text)).await;
        expect_error(&mut ws, ErrorCode::EmptyMessage).await;
    }
    drop(ws);
    let mut ws = node.connect().await;
    send(&mut ws, &hello(Some(&token))).await;
    let ServerFrame::Welcome { history, .. } = recv(&mut ws).await else {
        panic!()
    };
    assert_eq!(history.len(), before, "nothing stored for empty messages");
    node.stop().await;
}

#[tokio::test]
async fn flood_is_rate_limited_then_closed_with_policy_violation() {
    let dir = tempfile::tempdir().unwrap();
    let (node, token) = node_with_history(&dir, |c| {
        c.server.rate_limit_per_sec = 1.0;
        c.server.rate_limit_burst = 3;
        c.server.rate_limit_close_after = 5;
    })
    .await;
    let mut ws = node.connect().await;
    send(&mut ws, &hello(Some(&token))).await; // uses one token
    recv(&mut ws).await;
    for _ in 0..10 {
        let _ = ws.send(Message::text(r#"{"type":"ping"}"#)).await;
    }
    let mut pongs = 0;
    let mut limited = 0;
    let code = loop {
        match tokio::time::timeout(FRAME_WAIT, futures_util::StreamExt::next(&mut ws))
            .await
            .unwrap()
        {
            Some(Ok(Message::Text(t))) => {
                match serde_json::from_str::<ServerFrame>(t.as_str()).unwrap() {
                    ServerFrame::Pong => pongs += 1,
                    ServerFrame::Error {
                        code: ErrorCode::RateLimited,
                        ..
                    } => limited += 1,
                    other => panic!("{other:?}"),
                }
            }
            Some(Ok(Message::Close(f))) => break f.map(|f| u16::from(f.code)),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(pongs, 2, "burst of 3 minus the hello");
    assert_eq!(limited, 4, "four rejections, the fifth closes");
    assert_eq!(code, Some(1008));
    assert_healthy_and_intact(&node, &token).await;
    node.stop().await;
}

#[tokio::test]
async fn too_many_connections_are_refused_with_1013() {
    let dir = tempfile::tempdir().unwrap();
    let (node, token) = node_with_history(&dir, |c| c.server.max_connections = 2).await;
    let _a = node.connect().await;
    let _b = node.connect().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut c = node.connect().await;
    assert_eq!(recv_close(&mut c).await, Some(1013));
    drop(_a);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_healthy_and_intact(&node, &token).await;
    let (_, metrics) = node.get("/metrics").await;
    assert!(
        metrics.contains("reason=\"too_many_connections\"} 1"),
        "{metrics}"
    );
    node.stop().await;
}

#[tokio::test]
async fn foreign_origin_is_refused_with_403() {
    let dir = tempfile::tempdir().unwrap();
    let (node, token) = node_with_history(&dir, |c| {
        c.server.allowed_origins = vec!["https://kiosk.example".into()]
    })
    .await;
    let req = |origin: &str| {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut r = node.ws_url().into_client_request().unwrap();
        r.headers_mut().insert("Origin", origin.parse().unwrap());
        r
    };
    let err = tokio_tungstenite::connect_async(req("https://evil.example"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("403"), "{err}");
    // Same origin and the allow-listed one are accepted.
    tokio_tungstenite::connect_async(req(&format!("http://{}", node.addr)))
        .await
        .unwrap();
    tokio_tungstenite::connect_async(req("https://kiosk.example"))
        .await
        .unwrap();
    assert_healthy_and_intact(&node, &token).await;
    node.stop().await;
}

#[tokio::test]
async fn unknown_or_forged_session_token_gets_an_error_and_a_fresh_session() {
    let dir = tempfile::tempdir().unwrap();
    let (node, token) = node_with_history(&dir, |_| {}).await;
    let mut ws = node.connect().await;
    let forged = "f".repeat(64);
    send(&mut ws, &hello(Some(&forged))).await;
    expect_error(&mut ws, ErrorCode::UnknownSession).await;
    let ServerFrame::Welcome {
        session,
        resumed,
        history,
        ..
    } = recv(&mut ws).await
    else {
        panic!()
    };
    assert!(!resumed);
    assert_ne!(session, forged);
    assert_ne!(session, token);
    assert!(
        history.iter().all(|h| h.text != "I lost my card"),
        "no leak of another session"
    );
    assert_healthy_and_intact(&node, &token).await;
    node.stop().await;
}

#[tokio::test]
async fn message_before_hello_and_wrong_protocol_version() {
    let dir = tempfile::tempdir().unwrap();
    let (node, token) = node_with_history(&dir, |_| {}).await;
    let mut ws = node.connect().await;
    send(&mut ws, &msg("hi")).await;
    expect_error(&mut ws, ErrorCode::HelloRequired).await;
    send(
        &mut ws,
        &ClientFrame::Hello {
            v: 99,
            session: None,
            lang: None,
        },
    )
    .await;
    expect_error(&mut ws, ErrorCode::UnsupportedVersion).await;
    assert_eq!(recv_close(&mut ws).await, Some(1002));
    assert_healthy_and_intact(&node, &token).await;
    node.stop().await;
}

#[tokio::test]
async fn a_refused_message_is_named_by_its_client_id_and_other_refusals_name_none() {
    let dir = tempfile::tempdir().unwrap();
    let (node, token) = node_with_history(&dir, |c| {
        c.server.rate_limit_per_sec = 0.1;
        c.server.rate_limit_burst = 2;
        c.server.rate_limit_close_after = 50;
    })
    .await;
    let mut ws = node.connect().await;
    send(&mut ws, &hello(Some(&token))).await; // the two tokens of the burst
    recv(&mut ws).await;
    ws.send(Message::text(r#"{"type":"ping"}"#)).await.unwrap();
    assert!(matches!(recv(&mut ws).await, ServerFrame::Pong));
    let line = r#"{"type":"message","text":"is my card blocked?","client_id":"line-7"}"#;
    ws.send(Message::text(line)).await.unwrap();
    match recv(&mut ws).await {
        ServerFrame::Error {
            code: ErrorCode::RateLimited,
            client_id,
            ..
        } => assert_eq!(client_id.as_deref(), Some("line-7")),
        other => panic!("expected rate_limited, got {other:?}"),
    }
    ws.send(Message::text(r#"{"type":"typing"}"#))
        .await
        .unwrap();
    match recv(&mut ws).await {
        ServerFrame::Error {
            code: ErrorCode::RateLimited,
            client_id,
            ..
        } => assert_eq!(client_id, None, "a typing signal names no line"),
        other => panic!("expected rate_limited, got {other:?}"),
    }
    drop(ws);
    assert_healthy_and_intact(&node, &token).await;
    node.stop().await;
}

#[tokio::test]
async fn a_socket_that_never_says_hello_is_closed_in_time() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(&dir);
    c.server.hello_deadline_secs = 1;
    let node = TestNode::start(c).await;
    let mut ok = node.connect().await;
    start_session(&mut ok).await;
    let mut ws = node.connect().await;
    let started = std::time::Instant::now();
    assert_eq!(recv_close(&mut ws).await, Some(1008));
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "not before the deadline"
    );
    // The visitor who said hello, opened earlier, is still served.
    ok.send(Message::text(r#"{"type":"ping"}"#)).await.unwrap();
    assert!(matches!(recv(&mut ok).await, ServerFrame::Pong));
    node.stop().await;
}

/// Read until the peer closes; true if it did within `secs`.
async fn closed_within(s: &mut tokio::net::TcpStream, secs: u64) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    tokio::time::timeout(Duration::from_secs(secs), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await
    .is_ok()
}

/// Issue 11, finding 8: a connection that sends half a request line is
/// closed at the request deadline (it stayed open 150 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_request_is_closed_at_the_deadline() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(&dir);
    c.server.request_deadline_secs = 1;
    let node = TestNode::start(c).await;
    let mut slow = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    slow.write_all(b"GET /ws HTT").await.unwrap();
    let started = std::time::Instant::now();
    assert!(closed_within(&mut slow, 5).await, "closed at the deadline");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "not before it"
    );
    // A whole request in time is served, and its socket may then stay.
    let mut ws = node.connect().await;
    start_session(&mut ws).await;
    let (status, _) = node.get("/healthz").await;
    assert_eq!(status, 200);
    node.stop().await;
}

/// Issue 11, finding 8: one address cannot take every connection, and under
/// a flood this host's health checks still get in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_is_capped_and_health_answers_under_a_flood() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(&dir);
    c.server.max_connections_per_address = 20;
    c.server.max_open_connections = 10;
    c.server.request_deadline_secs = 30;
    let node = TestNode::start(c).await;
    // A flood of idle sockets from 127.0.0.1.
    let mut flood = Vec::new();
    for _ in 0..40 {
        flood.push(tokio::net::TcpStream::connect(node.addr).await.unwrap());
    }
    // The first 20 are held; the node closes the rest at once.
    let mut closed = 0;
    for s in flood.iter_mut().skip(20) {
        if closed_within(s, 2).await {
            closed += 1;
        }
    }
    assert_eq!(
        closed, 20,
        "connections over the per-address cap are closed"
    );
    assert!(
        !closed_within(&mut flood[0], 1).await,
        "those within it stay"
    );
    // Over max_open_connections, this host (another loopback address) still
    // reaches /healthz and /metrics.
    let get_from_2 = |path: &'static str| async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let mut s = socket.connect(node.addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    };
    assert!(get_from_2("/healthz").await.starts_with("HTTP/1.1 200"));
    let metrics = get_from_2("/metrics").await;
    assert!(
        metrics.contains("edgedesk_rejected_inputs_total{reason=\"per_address\"} 20"),
        "refusals are counted: {}",
        metrics
            .lines()
            .filter(|l| l.contains("per_address"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    drop(flood);
    node.stop().await;
}

/// Issue 11, finding 8: one address cannot make the node create sessions as
/// fast as it can send hellos.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_sessions_from_one_address_are_rate_limited() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(&dir);
    c.server.hellos_per_minute_per_address = 5;
    let node = TestNode::start(c).await;
    let mut kept = Vec::new();
    for _ in 0..5 {
        let mut ws = node.connect().await;
        start_session(&mut ws).await;
        kept.push(ws);
    }
    let mut ws = node.connect().await;
    send(&mut ws, &hello(None)).await;
    let f = recv(&mut ws).await;
    assert!(
        matches!(&f, ServerFrame::Error { code: ErrorCode::RateLimited, message, .. } if message.contains("new sessions")),
        "{f:?}"
    );
    assert_eq!(recv_close(&mut ws).await, Some(1013));
    // Those already in keep being served.
    kept[0]
        .send(Message::text(r#"{"type":"ping"}"#))
        .await
        .unwrap();
    assert!(matches!(recv(&mut kept[0]).await, ServerFrame::Pong));
    node.stop().await;
}
