//! Edge ↔ cloud sync with real parts: a cloud controller (embedded rumqttd
//! broker, SQLite) and edge nodes in this process, talking MQTT over
//! loopback with sealed envelopes.

use std::time::Duration;

use edgedesk_common::chat::ServerFrame;
use edgedesk_systest::cloud::*;
use edgedesk_systest::*;

async fn escalate(node: &TestNode, text: &str) {
    let mut ws = node.connect().await;
    start_session(&mut ws).await;
    let (_, r) = say(&mut ws, &msg(text)).await;
    assert!(matches!(&r[0], ServerFrame::Reply { .. }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_the_controller_once_and_leave_the_outbox() {
    let cloud = Cloud::start().await;
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = edge(&cloud, &da, "branch-a").await;
    let b = edge(&cloud, &db, "branch-b").await;
    cloud.wait_online("branch-a", 10).await;
    cloud.wait_online("branch-b", 10).await;
    escalate(&a, "I want to talk to a human, call me on +44 20 7946 0958").await;
    escalate(&b, "转人工").await;
    eventually(10, "two escalations stored", || async {
        cloud.events("kind=escalation").await.len() == 2
    })
    .await;
    let from_a = cloud.events("node=branch-a").await;
    assert_eq!(from_a.len(), 1);
    let text = from_a[0]["event"]["last_text"].as_str().unwrap();
    assert!(
        text.contains("[phone]") && !text.contains("7946"),
        "personal data masked: {text}"
    );
    eventually(10, "outboxes drained", || async {
        a.store().outbox_depth().await.unwrap() == 0 && b.store().outbox_depth().await.unwrap() == 0
    })
    .await;
    // Heartbeats carry the node's state.
    eventually(10, "heartbeat recorded", || async {
        cloud.node("branch-a").await["heartbeat"]["model_name"] == "edgedesk-intents"
    })
    .await;
    // Labels are the operator's key/values, shown with the node.
    let r = cloud
        .http
        .put(cloud.url("/api/v1/nodes/branch-a/labels"))
        .bearer_auth(&cloud.ctl.admin_token)
        .json(&serde_json::json!({ "labels": { "region": "emea", "branch": "paris-1", "kind": "bank" } }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let shown = cloud.node("branch-a").await;
    assert_eq!(shown["labels"]["region"], "emea");
    assert_eq!(shown["labels"]["kind"], "bank");
    let listed = cloud.get("/api/v1/nodes").await;
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["id"] == "branch-a" && n["labels"]["branch"] == "paris-1")
    );
    // A command travels down, is executed once, and acknowledged.
    let id = cloud.ping("branch-a").await;
    eventually(10, "command acknowledged", || async {
        let cmds = cloud.get("/api/v1/nodes/branch-a/commands").await;
        cmds.as_array()
            .unwrap()
            .iter()
            .any(|c| c["id"] == id.as_str() && c["ok"] == true && c["detail"] == "pong")
    })
    .await;
    a.stop().await;
    b.stop().await;
    cloud.token.cancel();
}

/// A raw MQTT client on the broker with a node's credentials.
async fn raw_client(
    identity_file: &std::path::Path,
    client_suffix: &str,
) -> (
    rumqttc::AsyncClient,
    tokio::sync::mpsc::Receiver<(String, Vec<u8>)>,
) {
    raw_client_at(identity_file, client_suffix, None).await
}

/// A raw MQTT client with a node's broker login: through the gate as the
/// node would (TLS), or with `at` straight to rumqttd on loopback — a
/// compromised broker, which sees and forwards everything.
async fn raw_client_at(
    identity_file: &std::path::Path,
    client_suffix: &str,
    at: Option<std::net::SocketAddr>,
) -> (
    rumqttc::AsyncClient,
    tokio::sync::mpsc::Receiver<(String, Vec<u8>)>,
) {
    let f: edge_node::uplink::IdentityFile =
        serde_json::from_str(&std::fs::read_to_string(identity_file).unwrap()).unwrap();
    let m = f.mqtt.unwrap();
    let (host, port) = match at {
        Some(a) => (a.ip().to_string(), a.port()),
        None => (m.host, m.port),
    };
    let mut o = rumqttc::MqttOptions::new(format!("{}~{client_suffix}", m.username), host, port);
    o.set_credentials(m.username, m.password);
    o.set_max_packet_size(1 << 20, 1 << 20);
    assert!(m.tls, "the embedded broker speaks TLS by default");
    if at.is_none() {
        let tls = edgedesk_support::tls::pinned_client(m.ca_pem.as_deref().unwrap()).unwrap();
        o.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(tls),
        ));
    }
    let (client, mut ev) = rumqttc::AsyncClient::new(o, 100);
    let (tx, rx) = tokio::sync::mpsc::channel(1000);
    tokio::spawn(async move {
        loop {
            let e = match ev.poll().await {
                Ok(e) => e,
                Err(err) => {
                    // Tell the test the connection ended (empty topic).
                    let _ = tx.send((String::new(), err.to_string().into_bytes())).await;
                    break;
                }
            };
            if std::env::var("DEBUG_RAW").is_ok() {
                eprintln!("raw: {e:?}");
            }
            match e {
                rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) => {
                    let _ = tx.send((p.topic.clone(), p.payload.to_vec())).await;
                }
                // A subscription took effect: the session is live.
                rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)) => {
                    let _ = tx.send(("$suback".into(), Vec::new())).await;
                }
                _ => {}
            }
        }
    });
    (client, rx)
}

/// Wait until a raw client's connection ends; returns why.
async fn closed(seen: &mut tokio::sync::mpsc::Receiver<(String, Vec<u8>)>) -> String {
    loop {
        let (topic, payload) = tokio::time::timeout(Duration::from_secs(5), seen.recv())
            .await
            .expect("the connection is closed in time")
            .expect("a message");
        assert!(
            topic.is_empty() || !topic.contains("branch-a"),
            "saw {topic}"
        );
        assert_ne!(
            topic, "$suback",
            "a refused subscription is not acknowledged"
        );
        if topic.is_empty() {
            return String::from_utf8_lossy(&payload).into_owned();
        }
    }
}

async fn refused(cloud: &Cloud, reason: &str) -> u64 {
    cloud.ctl.metrics.refused_count(reason)
}

/// Publish `payload` on branch-a's up topic and wait until the controller
/// refuses it for `reason`.
async fn inject_refused(
    cloud: &Cloud,
    rogue: &rumqttc::AsyncClient,
    payload: Vec<u8>,
    reason: &str,
    what: &str,
) {
    let before = refused(cloud, reason).await;
    rogue
        .publish(
            "edgedesk/v1/nodes/branch-a/up",
            rumqttc::QoS::AtLeastOnce,
            false,
            payload,
        )
        .await
        .unwrap();
    eventually(5, what, || async { refused(cloud, reason).await > before }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_is_untrusted_forgery_replay_tampering_and_revocation_are_refused() {
    let cloud = Cloud::start().await;
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = edge(&cloud, &da, "branch-a").await;
    let b = edge(&cloud, &db, "branch-b").await;
    cloud.wait_online("branch-a", 10).await;
    cloud.wait_online("branch-b", 10).await;

    // Through the gate, branch-b's login may not read or write another
    // node's topics (issue 11, finding 6): the connection is closed.
    let b_identity_file = db.path().join("identity.json");
    let acl_before = cloud.ctl.metrics.broker_refused_count("acl");
    let (nosy, mut nosy_seen) = raw_client(&b_identity_file, "nosy").await;
    nosy.subscribe("#", rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    closed(&mut nosy_seen).await;
    let (forger, mut forger_seen) = raw_client(&b_identity_file, "forger").await;
    forger
        .publish(
            "edgedesk/v1/nodes/branch-a/up",
            rumqttc::QoS::AtLeastOnce,
            false,
            b"{}".to_vec(),
        )
        .await
        .unwrap();
    closed(&mut forger_seen).await;
    assert_eq!(
        cloud.ctl.metrics.broker_refused_count("acl"),
        acl_before + 2
    );

    // Beyond the gate the broker itself is not trusted either: a rogue on
    // `#` at rumqttd (a compromised broker) sees only ciphertext, and what
    // it replays, tampers with or forges is refused.
    let (rogue, mut seen) =
        raw_client_at(&b_identity_file, "rogue", cloud.ctl.broker_internal).await;
    rogue
        .subscribe("#", rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    escalate(&a, "I want a human, my secret word is PAPAYA-77").await;
    eventually(10, "escalation stored", || async {
        cloud.events("node=branch-a").await.len() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut captured = Vec::new();
    while let Ok((topic, payload)) = seen.try_recv() {
        let text = String::from_utf8_lossy(&payload);
        assert!(
            !text.contains("PAPAYA"),
            "plaintext visible to a subscriber on # ({topic})"
        );
        if topic == "edgedesk/v1/nodes/branch-a/up" {
            captured.push(payload);
        }
    }
    assert!(
        !captured.is_empty(),
        "the rogue saw branch-a's traffic (as ciphertext)"
    );

    // Replay: an envelope captured off the broker, published again.
    inject_refused(
        &cloud,
        &rogue,
        captured[0].clone(),
        "replay",
        "replay refused",
    )
    .await;

    // Tampering: change one character of the sealed body.
    let mut env: serde_json::Value = serde_json::from_slice(&captured[captured.len() - 1]).unwrap();
    let body = env["body"].as_str().unwrap().to_owned();
    let flipped = match body.strip_prefix('A') {
        Some(rest) => format!("B{rest}"),
        None => format!("A{}", &body[1..]),
    };
    env["body"] = serde_json::Value::String(flipped);
    env["seq"] = serde_json::json!(u64::MAX / 2);
    inject_refused(
        &cloud,
        &rogue,
        serde_json::to_vec(&env).unwrap(),
        "signature",
        "tampered envelope refused",
    )
    .await;

    // Forgery: branch-b signs with its own key but claims to be branch-a.
    let fb: edge_node::uplink::IdentityFile =
        serde_json::from_str(&std::fs::read_to_string(db.path().join("identity.json")).unwrap())
            .unwrap();
    let b_identity = fb.identity().unwrap();
    let controller: edgedesk_common::envelope::Peer = fb.controller.unwrap().parse().unwrap();
    let forged_events = edgedesk_common::sync::Up::Events { events: vec![] };
    let forged = edgedesk_common::envelope::Envelope::seal(
        &b_identity,
        &edgedesk_common::sealing::Outgoing::new(controller.recipient(), [3; 32], 0),
        edgedesk_common::envelope::Header {
            id: "forged-1",
            from: "branch-a",
            to: "controller",
            seq: u64::MAX / 2,
            ts: chrono::Utc::now().timestamp_millis(),
        },
        [9; 24],
        &serde_json::to_vec(&forged_events).unwrap(),
    );
    inject_refused(
        &cloud,
        &rogue,
        forged.to_json(),
        "signature",
        "forged envelope refused",
    )
    .await;
    // …and the honest sender name on the wrong topic is refused too.
    let mut wrong_topic = serde_json::from_slice::<serde_json::Value>(&forged.to_json()).unwrap();
    wrong_topic["from"] = serde_json::json!("branch-b");
    inject_refused(
        &cloud,
        &rogue,
        serde_json::to_vec(&wrong_topic).unwrap(),
        "malformed",
        "sender/topic mismatch refused",
    )
    .await;
    assert_eq!(
        cloud.events("node=branch-a").await.len(),
        1,
        "nothing forged was stored"
    );

    // Revocation: branch-b's live connection is closed at once, its login
    // refused from then on, and nothing it sends is stored.
    let (watcher, mut watcher_seen) = raw_client(&b_identity_file, "watcher").await;
    watcher
        .subscribe("edgedesk/v1/nodes/branch-b/down", rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    let (topic, _) = watcher_seen.recv().await.unwrap();
    assert_eq!(topic, "$suback", "the watcher's own topic is allowed");
    let logins_before = cloud.ctl.metrics.broker_refused_count("login");
    cloud
        .post("/api/v1/nodes/branch-b/revoke", serde_json::json!({}))
        .await;
    let revoked_at = std::time::Instant::now();
    closed(&mut watcher_seen).await;
    assert!(
        revoked_at.elapsed() < Duration::from_secs(1),
        "a revoked node's session is closed within a second ({:?})",
        revoked_at.elapsed()
    );
    escalate(&b, "I want a human").await;
    eventually(10, "the revoked node's login is refused", || async {
        cloud.ctl.metrics.broker_refused_count("login") > logins_before
    })
    .await;
    assert!(
        cloud.events("node=branch-b").await.is_empty(),
        "nothing from a revoked node is stored"
    );
    let node = cloud.get("/api/v1/nodes/branch-b").await;
    assert_eq!(node["revoked"], true);
    let history = cloud.get("/api/v1/nodes/branch-b/history").await;
    assert!(
        history
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["kind"] == "revoked"),
        "{history}"
    );

    a.stop().await;
    b.stop().await;
    cloud.token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolment_tokens_are_one_time_and_ids_unique() {
    let cloud = Cloud::start().await;
    let http = cloud.http.clone();
    let identity = edgedesk_common::envelope::Identity::from_secret(&[5; 64]);
    let token = cloud.token("branch-z").await;
    let enroll = |node: &str, token: &str| {
        let req = edgedesk_common::sync::EnrollRequest {
            token: token.into(),
            node_id: node.into(),
            keys: identity.public(),
            proof: identity.sign(&edgedesk_common::sync::enroll_proof_message(node, token)),
            sw_version: String::new(),
        };
        http.post(cloud.url("/api/v1/enroll")).json(&req).send()
    };
    assert_eq!(
        enroll("branch-y", &token).await.unwrap().status(),
        403,
        "token bound to another node"
    );
    assert_eq!(enroll("branch-z", &token).await.unwrap().status(), 200);
    assert_eq!(
        enroll("branch-z", &token).await.unwrap().status(),
        403,
        "token used twice"
    );
    let t2 = cloud.post("/api/v1/tokens", serde_json::json!({})).await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        enroll("branch-z", &t2).await.unwrap().status(),
        409,
        "node id enrolled twice"
    );
    assert_eq!(enroll("Bad/Id", &t2).await.unwrap().status(), 400);
    assert_eq!(
        enroll("edgedesk-controller", &t2).await.unwrap().status(),
        400,
        "reserved for the controller"
    );
    // A proof made with another key is refused.
    let mut req = edgedesk_common::sync::EnrollRequest {
        token: t2.clone(),
        node_id: "branch-q".into(),
        keys: identity.public(),
        proof: edgedesk_common::envelope::Identity::from_secret(&[6; 64]).sign(b"whatever"),
        sw_version: String::new(),
    };
    assert_eq!(
        http.post(cloud.url("/api/v1/enroll"))
            .json(&req)
            .send()
            .await
            .unwrap()
            .status(),
        400
    );
    req.proof = identity.sign(&edgedesk_common::sync::enroll_proof_message(
        "branch-q", &t2,
    ));
    assert_eq!(
        http.post(cloud.url("/api/v1/enroll"))
            .json(&req)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // The operator API needs the admin token.
    assert_eq!(
        http.get(cloud.url("/api/v1/nodes"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        http.get(cloud.url("/api/v1/nodes"))
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    cloud.token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_cut_and_restored_backlog_drains_once() {
    let broker_port = free_port();
    let proxy =
        edgedesk_systest::proxy::FaultProxy::start(format!("127.0.0.1:{broker_port}")).await;
    let cloud = Cloud::start_with(|c| {
        c.mqtt.listen = format!("127.0.0.1:{broker_port}");
        c.mqtt.advertise_port = proxy.port;
    })
    .await;
    let da = tempfile::tempdir().unwrap();
    let a = edge(&cloud, &da, "branch-a").await;
    cloud.wait_online("branch-a", 10).await;

    proxy.cut();
    // A command for the unreachable node waits in the controller's queue.
    let cmd_id = cloud.ping("branch-a").await;
    let n = 30;
    for i in 0..n {
        escalate(&a, &format!("I want to talk to a human ({i})")).await;
    }
    eventually(15, "node marked offline", || async {
        cloud.node("branch-a").await["online"] == false
    })
    .await;
    assert_eq!(
        a.store().outbox_depth().await.unwrap(),
        n,
        "events held while the link is down"
    );
    assert!(cloud.events("node=branch-a").await.is_empty());

    proxy.restore();
    eventually(30, "backlog drained", || async {
        cloud.events("node=branch-a").await.len() as u64 == n
            && a.store().outbox_depth().await.unwrap() == 0
    })
    .await;
    eventually(
        40,
        "queued command delivered after the link returned",
        || async {
            let cmds = cloud.get("/api/v1/nodes/branch-a/commands").await;
            cmds.as_array()
                .unwrap()
                .iter()
                .any(|c| c["id"] == cmd_id.as_str() && c["ok"] == true)
        },
    )
    .await;
    let events = cloud.events("node=branch-a&limit=1000").await;
    let ids: std::collections::HashSet<&str> =
        events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len() as u64, n, "each event stored exactly once");
    let history = cloud.get("/api/v1/nodes/branch-a/history").await;
    let kinds: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|h| h["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds
            .windows(3)
            .any(|w| w == ["online", "offline", "online"]),
        "{kinds:?}"
    );
    a.stop().await;
    cloud.token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_refuses_plain_mqtt_and_strangers() {
    let cloud = Cloud::start().await;
    let da = tempfile::tempdir().unwrap();
    let a = edge(&cloud, &da, "branch-a").await;
    cloud.wait_online("branch-a", 10).await;
    let f: edge_node::uplink::IdentityFile =
        serde_json::from_str(&std::fs::read_to_string(da.path().join("identity.json")).unwrap())
            .unwrap();
    let m = f.mqtt.unwrap();
    let try_connect = |tls: bool, user: &str, pass: &str| {
        let mut o = rumqttc::MqttOptions::new(format!("{user}~probe"), m.host.clone(), m.port);
        o.set_credentials(user, pass);
        if tls {
            let t = edgedesk_support::tls::pinned_client(m.ca_pem.as_deref().unwrap()).unwrap();
            o.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(t),
            ));
        }
        let (_c, mut ev) = rumqttc::AsyncClient::new(o, 10);
        async move {
            matches!(
                tokio::time::timeout(FRAME_WAIT, ev.poll()).await,
                Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))))
            )
        }
    };
    assert!(
        try_connect(true, &m.username, &m.password).await,
        "the node's own login over TLS works"
    );
    assert!(
        !try_connect(false, &m.username, &m.password).await,
        "plain MQTT is refused"
    );
    assert!(
        !try_connect(true, &m.username, "wrong").await,
        "a wrong password is refused"
    );
    assert!(
        !try_connect(true, "nobody", "x").await,
        "an unknown user is refused"
    );
    a.stop().await;
    cloud.token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_a_reachable_controller_still_serves() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(&dir);
    c.cloud.enabled = true;
    c.cloud.controller_url = format!("https://127.0.0.1:{}", free_port()); // nothing listens
    c.cloud.ca_sha256 = format!("sha256:{}", "00".repeat(32));
    c.cloud.node_id = "branch-lonely".into();
    c.cloud.enroll_token = "unused".into();
    c.cloud.identity_path = dir.path().join("identity.json");
    let node = TestNode::start(c).await;
    let mut ws = node.connect().await;
    start_session(&mut ws).await;
    let (_, r) = say(&mut ws, &msg("I want to talk to a human")).await;
    assert!(matches!(&r[0], ServerFrame::Reply { .. }));
    assert_eq!(
        node.store().outbox_depth().await.unwrap(),
        1,
        "the escalation waits in the outbox"
    );
    assert!(
        dir.path().join("identity.json").exists(),
        "the key pair is made at first start"
    );
    node.stop().await;
}

/// The edge side of a live handoff, driven through the controller's command
/// queue: agent joins, visitor and agent talk, agent closes, visitor rates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_commands_reach_the_visitor_and_visitor_lines_reach_the_cloud() {
    use edgedesk_common::chat::{ChatState, Sender};
    let cloud = Cloud::start().await;
    let da = tempfile::tempdir().unwrap();
    let a = edge(&cloud, &da, "branch-a").await;
    cloud.wait_online("branch-a", 10).await;
    let mut ws = a.connect().await;
    let (session, _) = start_session(&mut ws).await;
    say(
        &mut ws,
        &msg("my card 4111 1111 1111 1111 was declined, call 13812345678"),
    )
    .await;
    let (_, r) = say(&mut ws, &msg("I want to talk to a human")).await;
    let ServerFrame::Reply { state, .. } = &r[0] else {
        panic!()
    };
    assert_eq!(*state, ChatState::WaitingForAgent);
    eventually(10, "escalation with transcript", || async {
        !cloud.events("kind=escalation").await.is_empty()
    })
    .await;
    let esc = &cloud.events("kind=escalation").await[0]["event"];
    let conversation = esc["conversation"].as_str().unwrap().to_owned();
    // The transcript is kept once, in the chat, and masked on the branch
    // before it left (issue 11, finding 4).
    assert_eq!(esc["transcript"], serde_json::json!([]), "{esc}");
    let chat_lines = || async {
        let chat = cloud.ctl.store.chat(&conversation).await.unwrap().unwrap();
        chat.lines
            .iter()
            .map(|l| l.text.clone())
            .collect::<Vec<_>>()
    };
    let lines = chat_lines().await;
    assert!(
        lines.contains(&"my card [card] was declined, call [phone]".to_owned())
            && lines.contains(&"I want to talk to a human".to_owned()),
        "{lines:?}"
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("4111") || l.contains("1381"))
    );

    // Nobody is online at the desk: the visitor is told their place.
    let f = recv(&mut ws).await;
    assert!(
        matches!(&f, ServerFrame::Notice { code, text } if code == "queue_position" && text.contains("number 1")),
        "{f:?}"
    );
    let command = |kind: &str, args: serde_json::Value| {
        cloud.post(
            "/api/v1/nodes/branch-a/commands",
            serde_json::json!({ "kind": kind, "args": args }),
        )
    };
    command(
        "agent_joined",
        serde_json::json!({ "conversation": conversation, "agent_name": "Grace" }),
    )
    .await;
    let f = recv(&mut ws).await;
    let ServerFrame::Reply {
        from, text, state, ..
    } = &f
    else {
        panic!("{f:?}")
    };
    assert_eq!((*from, *state), (Sender::System, ChatState::WithAgent));
    assert!(text.contains("Grace"));
    command("agent_message", serde_json::json!({ "conversation": conversation, "agent_name": "Grace", "text": "Hello, how can I help?" })).await;
    let f = recv(&mut ws).await;
    assert!(
        matches!(&f, ServerFrame::Reply { from: Sender::Agent, text, .. } if text == "Hello, how can I help?"),
        "{f:?}"
    );
    // The visitor's answer goes to the cloud, not to the bot.
    send(
        &mut ws,
        &msg("my card keeps getting declined, write to li@example.cn"),
    )
    .await;
    assert!(matches!(recv(&mut ws).await, ServerFrame::Ack { .. }));
    eventually(10, "visitor line forwarded, masked", || async {
        chat_lines()
            .await
            .contains(&"my card keeps getting declined, write to [email]".to_owned())
    })
    .await;
    let line_events = cloud.events("kind=chat_line").await;
    assert!(
        line_events.iter().all(|e| e["event"]["line"]["text"] == ""),
        "the event log does not keep the line a second time: {line_events:?}"
    );
    command(
        "agent_closed",
        serde_json::json!({ "conversation": conversation }),
    )
    .await;
    let f = recv(&mut ws).await;
    let ServerFrame::Reply {
        quick_replies,
        state,
        ..
    } = &f
    else {
        panic!("{f:?}")
    };
    assert_eq!(*state, ChatState::Bot);
    let five = quick_replies
        .iter()
        .find(|q| q.payload == "/rate 5")
        .expect("rating buttons");
    say(&mut ws, &button(&five.label, &five.payload)).await;
    eventually(10, "rating stored", || async {
        cloud
            .events("kind=rating")
            .await
            .iter()
            .any(|e| e["event"]["score"] == 5)
    })
    .await;
    // Every command is acknowledged as delivered (the ack may trail the frame).
    eventually(10, "all commands acknowledged", || async {
        let cmds = cloud.get("/api/v1/nodes/branch-a/commands").await;
        cmds.as_array()
            .unwrap()
            .iter()
            .all(|c| c["ok"] == true && c["detail"] == "delivered")
    })
    .await;
    // A reload shows the agent's lines in the history.
    drop(ws);
    let mut ws = a.connect().await;
    send(&mut ws, &hello(Some(&session))).await;
    let ServerFrame::Welcome { history, .. } = recv(&mut ws).await else {
        panic!()
    };
    assert!(
        history
            .iter()
            .any(|h| h.from == Sender::Agent && h.text == "Hello, how can I help?"),
        "{history:?}"
    );
    a.stop().await;
    cloud.token.cancel();
}

/// Issue 11, finding 6: one node's login flooding the broker is slowed at
/// the gate (it stops reading that connection), and other nodes' traffic
/// goes on: a ping to another branch is still acknowledged promptly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_flooding_the_broker_is_throttled_and_others_go_on() {
    let cloud = Cloud::start_with(|c| c.mqtt.max_messages_per_sec = 50).await;
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let _a = edge(&cloud, &da, "branch-a").await;
    let b = edge(&cloud, &db, "branch-b").await;
    cloud.wait_online("branch-a", 10).await;
    cloud.wait_online("branch-b", 10).await;
    let (flood, _seen) = raw_client(&db.path().join("identity.json"), "flood").await;
    let flooding = tokio::spawn(async move {
        for i in 0..2000u32 {
            let junk = format!("junk {i}").into_bytes();
            if flood
                .publish(
                    "edgedesk/v1/nodes/branch-b/up",
                    rumqttc::QoS::AtMostOnce,
                    false,
                    junk,
                )
                .await
                .is_err()
            {
                break;
            }
        }
    });
    eventually(10, "the gate throttles the flood", || async {
        cloud.ctl.metrics.broker_throttled.get() > 0
    })
    .await;
    let id = cloud.ping("branch-a").await;
    eventually(
        3,
        "branch-a's ping acknowledged during the flood",
        || async { cloud.acked_ok("branch-a", &id).await },
    )
    .await;
    // Of the 2000 junk messages, the controller has seen only what the
    // gate let through at 50 a second (plus a burst of 100).
    let opened = cloud.ctl.metrics.refused_count("malformed");
    assert!(
        opened > 0 && opened < 1000,
        "{opened} junk messages passed the gate"
    );
    flooding.abort();
    b.stop().await;
}

/// Issue 11, finding 10: a node's last will is honoured however long its
/// connection lived (it was refused once older than the clock-skew window),
/// and a will replayed later, from an earlier connection, is ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_last_will_counts_for_its_own_connection_only() {
    let broker_port = free_port();
    let proxy =
        edgedesk_systest::proxy::FaultProxy::start(format!("127.0.0.1:{broker_port}")).await;
    let cloud = Cloud::start_with(|c| {
        c.mqtt.listen = format!("127.0.0.1:{broker_port}");
        c.mqtt.advertise_port = proxy.port;
        c.sync.max_clock_skew_secs = 1;
        // Offline can only come from the will within this test.
        c.fleet.heartbeat_timeout_secs = 120;
    })
    .await;
    let da = tempfile::tempdir().unwrap();
    let a = edge(&cloud, &da, "branch-a").await;
    cloud.wait_online("branch-a", 10).await;
    // A compromised broker records what it publishes on branch-a's topic.
    let (rogue, mut seen) = raw_client_at(
        &da.path().join("identity.json"),
        "rogue",
        cloud.ctl.broker_internal,
    )
    .await;
    rogue
        .subscribe("edgedesk/v1/nodes/branch-a/up", rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    assert_eq!(seen.recv().await.unwrap().0, "$suback");
    // The will was sealed when the node connected; let it grow older than
    // the controller's clock-skew window (the premise of the finding).
    let connected = std::time::Instant::now();
    eventually(10, "the will is older than the skew window", || async {
        connected.elapsed() > Duration::from_millis(2500)
    })
    .await;
    proxy.cut();
    eventually(10, "the last will takes the node offline", || async {
        cloud.node("branch-a").await["online"] == false
    })
    .await;
    let history = cloud.get("/api/v1/nodes/branch-a/history").await;
    assert!(
        history.to_string().contains("last_will"),
        "offline because of the will: {history}"
    );
    // The will as the broker published it (the newest message on the topic).
    let mut will = None;
    while let Ok((topic, payload)) = seen.try_recv() {
        if topic == "edgedesk/v1/nodes/branch-a/up" {
            will = Some(payload);
        }
    }
    let will = will.expect("the rogue saw the will");
    proxy.restore();
    cloud.wait_online("branch-a", 15).await;
    // Replayed now, the old connection's will changes nothing.
    rogue
        .publish(
            "edgedesk/v1/nodes/branch-a/up",
            rumqttc::QoS::AtLeastOnce,
            false,
            will,
        )
        .await
        .unwrap();
    let offline_reasons = || async {
        cloud
            .get("/api/v1/nodes/branch-a/history")
            .await
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| h["kind"] == "offline")
            .count()
    };
    let before = offline_reasons().await;
    // Wait until the controller has handled the replay (a ping sent after it
    // is acknowledged), then check the node is still online.
    let id = cloud.ping("branch-a").await;
    eventually(10, "a ping after the replay is acknowledged", || async {
        cloud.acked_ok("branch-a", &id).await
    })
    .await;
    assert_eq!(cloud.node("branch-a").await["online"], true);
    assert_eq!(
        offline_reasons().await,
        before,
        "the replayed will was ignored"
    );
    a.stop().await;
}

/// Every sealing secret in the node's identity file and the controller's
/// keyring file right now, as a thief who copies them would have them.
fn steal(identity: &std::path::Path, ctl_seal: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for (path, pointer) in [(identity, "/sealing/keys"), (ctl_seal, "/keys")] {
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        // A file caught half renamed is read again on the next round.
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
            continue;
        };
        for k in v
            .pointer(pointer)
            .and_then(|k| k.as_array())
            .into_iter()
            .flatten()
        {
            if let Some(s) = k["secret"].as_str() {
                out.push(s.to_owned());
            }
        }
    }
    out
}

/// Stolen sealing secrets as keyrings of one key each, by key id.
fn rings(
    secrets: &[String],
) -> std::collections::HashMap<String, edgedesk_common::sealing::Keyring> {
    use base64::Engine as _;
    secrets
        .iter()
        .map(|s| {
            let bytes: [u8; 32] = base64::engine::general_purpose::STANDARD
                .decode(s)
                .unwrap()
                .try_into()
                .unwrap();
            let ring = edgedesk_common::sealing::Keyring::new(bytes, 0);
            (ring.current().id().to_owned(), ring)
        })
        .collect()
}

/// Open `payload` (an envelope recorded off the broker) with the stolen key
/// it names, checking it came from `node` or the controller.
fn open_with(
    payload: &[u8],
    stolen: &std::collections::HashMap<String, edgedesk_common::sealing::Keyring>,
    node: &edgedesk_common::envelope::Peer,
    controller: &edgedesk_common::envelope::Peer,
) -> Option<Vec<u8>> {
    let env = edgedesk_common::envelope::Envelope::from_json(payload).ok()?;
    let sender = if env.from == "controller" {
        controller
    } else {
        node
    };
    env.open(sender, stolen.get(&env.rk)?).ok()
}

/// Issue 11, finding 7 (forward secrecy). An attacker records every
/// envelope on the broker while a thief copies both sides' key files every
/// 50 ms. While a key is on disk, what was sealed for it opens (the attack
/// is real); once both sides have rotated and the overlap has passed, the
/// keys then on disk open none of the recording, and no byte of an erased
/// secret (raw, base64 or hex) is left in any file of either data
/// directory. The link keeps working through the rotations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_traffic_cannot_be_read_once_the_keys_rotated_away() {
    use base64::Engine as _;
    let cloud = Cloud::start_with(|c| {
        c.sync.seal_key_rotate_secs = 3;
        c.sync.seal_key_overlap_secs = 1;
    })
    .await;
    let da = tempfile::tempdir().unwrap();
    let a = edge_with(&cloud, &da, "branch-a", |c| {
        c.cloud.seal_key_rotate_secs = 3;
        c.cloud.seal_key_overlap_secs = 1;
    })
    .await;
    cloud.wait_online("branch-a", 10).await;
    let identity = da.path().join("identity.json");
    let ctl_seal = cloud._dir.path().join("controller.seal");
    let file: edge_node::uplink::IdentityFile =
        serde_json::from_str(&std::fs::read_to_string(&identity).unwrap()).unwrap();
    let node_peer: edgedesk_common::envelope::Peer =
        file.identity().unwrap().public().parse().unwrap();
    let ctl_peer: edgedesk_common::envelope::Peer =
        file.controller.clone().unwrap().parse().unwrap();
    // The long-term files hold no sealing secret of their own any more.
    assert!(file.secret.ends_with(&"0".repeat(64)));
    let ctl_key = std::fs::read_to_string(cloud._dir.path().join("controller.key")).unwrap();
    assert!(ctl_key.trim().ends_with(&"0".repeat(64)), "{ctl_key}");

    // The thief, from now until told to stop.
    let stop = tokio_util::sync::CancellationToken::new();
    let thief = {
        let (identity, ctl_seal, stop) = (identity.clone(), ctl_seal.clone(), stop.clone());
        tokio::spawn(async move {
            let mut stolen = std::collections::BTreeSet::new();
            while !stop.is_cancelled() {
                stolen.extend(steal(&identity, &ctl_seal));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            stolen
        })
    };
    // The recorder on the broker itself (past the gate).
    let (tap, mut seen) = raw_client_at(&identity, "tap", cloud.ctl.broker_internal).await;
    tap.subscribe("edgedesk/v1/#", rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    let mut recorded = Vec::new();
    // Recording from the first heartbeat on.
    loop {
        let (topic, payload) = tokio::time::timeout(Duration::from_secs(5), seen.recv())
            .await
            .expect("the tap hears the node")
            .unwrap();
        if topic.starts_with("edgedesk/v1/nodes/branch-a/") {
            recorded.push(payload);
            break;
        }
    }
    // Traffic both ways across at least two rotations of each side.
    let started = std::time::Instant::now();
    escalate(&a, "I want a human, my secret word is PAPAYA-77").await;
    eventually(15, "escalation stored", || async {
        cloud.events("node=branch-a").await.len() == 1
    })
    .await;
    let mut pings = 0;
    while started.elapsed() < Duration::from_secs(7) {
        let id = cloud.ping("branch-a").await;
        eventually(15, "ping acknowledged while keys rotate", || async {
            cloud.acked_ok("branch-a", &id).await
        })
        .await;
        pings += 1;
    }
    tap.disconnect().await.unwrap();
    while let Some((topic, payload)) = seen.recv().await {
        if topic.is_empty() {
            break;
        }
        if topic.starts_with("edgedesk/v1/nodes/branch-a/") {
            recorded.push(payload);
        }
    }
    stop.cancel();
    let stolen = thief.await.unwrap();
    let downs = recorded
        .iter()
        .filter(|p| String::from_utf8_lossy(p).contains(r#""from":"controller""#))
        .count();
    assert!(
        downs >= pings && recorded.len() - downs >= pings,
        "{} envelopes recorded ({downs} down) for {pings} pings",
        recorded.len()
    );
    let rks: std::collections::BTreeSet<String> = recorded
        .iter()
        .filter_map(|p| edgedesk_common::envelope::Envelope::from_json(p).ok())
        .map(|e| e.rk)
        .collect();
    assert!(
        rks.len() >= 4,
        "both sides rotated at least once while recording: {rks:?}"
    );

    // With the keys stolen in time, everything recorded opens.
    let stolen: Vec<String> = stolen.into_iter().collect();
    let in_time = rings(&stolen);
    let mut papaya = false;
    for p in &recorded {
        let plain = open_with(p, &in_time, &node_peer, &ctl_peer).unwrap_or_else(|| {
            panic!(
                "a recorded envelope opens with a key stolen in time: {}",
                String::from_utf8_lossy(p)
            )
        });
        papaya |= String::from_utf8_lossy(&plain).contains("PAPAYA-77");
    }
    assert!(
        papaya,
        "the visitor's words were among what the thief could read"
    );

    // Wait until every key used while recording has gone from both files.
    eventually(30, "the recorded keys are erased on both sides", || async {
        let now = steal(&identity, &ctl_seal);
        !now.is_empty() && now.iter().all(|s| !stolen.contains(s))
    })
    .await;
    // Every key on disk now, tried on every recorded envelope whatever key
    // it names: none opens.
    let later = rings(&steal(&identity, &ctl_seal));
    for p in &recorded {
        let env = edgedesk_common::envelope::Envelope::from_json(p).unwrap();
        for (id, ring) in &later {
            let forced = ring.open_box(id, &env.epk).unwrap();
            assert_eq!(
                env.decrypt(&forced),
                Err(edgedesk_common::envelope::EnvelopeError::Undecryptable),
                "a key on disk after rotation opens recorded traffic"
            );
        }
    }
    // Not in the files, nor anywhere else in either data directory (the
    // databases, their journals, the replaced files' blocks).
    let mut files = Vec::new();
    for dir in [da.path(), cloud._dir.path()] {
        let mut stack = vec![dir.to_owned()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                if e.file_type().unwrap().is_dir() {
                    stack.push(e.path());
                } else {
                    files.push(e.path());
                }
            }
        }
    }
    assert!(files.len() > 5, "{files:?}");
    for s in &stolen {
        let raw = base64::engine::general_purpose::STANDARD.decode(s).unwrap();
        let forms = [
            raw.clone(),
            s.as_bytes().to_vec(),
            hex::encode(&raw).into_bytes(),
        ];
        for f in &files {
            let Ok(bytes) = std::fs::read(f) else {
                continue;
            };
            for form in &forms {
                assert!(
                    memchr::memmem::find(&bytes, form).is_none(),
                    "an erased sealing secret is still in {}",
                    f.display()
                );
            }
        }
    }
    // And the link still works.
    let id = cloud.ping("branch-a").await;
    eventually(15, "ping acknowledged after the rotations", || async {
        cloud.acked_ok("branch-a", &id).await
    })
    .await;
    a.stop().await;
}
