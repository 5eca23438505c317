//! The node's model manager through the real command path (controller REST →
//! command queue → MQTT → node → acknowledgement): what it refuses (TUF's
//! threat model: unsigned, foreign key, tampered, older), resuming a torn
//! download, and rollback.

use std::time::Duration;

use edgedesk_common::release::{CHUNK_SIZE, SignedRelease};
use edgedesk_systest::cloud::*;
use edgedesk_systest::*;

/// Queue `kind` with `args` for `node` and wait for its acknowledgement.
async fn command(cloud: &Cloud, node: &str, kind: &str, args: serde_json::Value) -> (bool, String) {
    let r = cloud
        .post(
            &format!("/api/v1/nodes/{node}/commands"),
            serde_json::json!({ "kind": kind, "args": args }),
        )
        .await;
    let id = r["id"].as_str().expect("command id").to_owned();
    for _ in 0..300 {
        let list = cloud.get(&format!("/api/v1/nodes/{node}/commands")).await;
        if let Some(c) = list
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == id.as_str() && !c["acked_at"].is_null())
        {
            return (
                c["ok"].as_bool().unwrap(),
                c["detail"].as_str().unwrap_or_default().to_owned(),
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{kind} was not acknowledged");
}

fn update(release: &SignedRelease) -> serde_json::Value {
    serde_json::json!({ "rollout": "manual", "release": release })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_resume_and_rollback() {
    let cloud = Cloud::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node = edge(&cloud, &dir, "branch-m").await;
    cloud.wait_online("branch-m", 20).await;
    let work = tempfile::tempdir().unwrap();
    let published_before = edgedesk_nlu::model::golden_runs();
    let good = cloud
        .publish(&bundle_version(work.path(), "1.1.0"))
        .await
        .signed;
    assert_eq!(
        edgedesk_nlu::model::golden_runs(),
        published_before + 1,
        "publishing runs the golden set once (it ran twice before)"
    );
    let old = cloud
        .publish(&bundle_version(work.path(), "0.9.0"))
        .await
        .signed;

    // Unsigned.
    let unsigned = SignedRelease {
        signature: String::new(),
        ..good.clone()
    };
    let (ok, detail) = command(&cloud, "branch-m", "model_update", update(&unsigned)).await;
    assert!(!ok && detail.contains("not signed"), "{detail}");
    // Signed by a key the node did not pin.
    let stranger = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let release: edgedesk_common::release::Release = serde_json::from_str(&good.release).unwrap();
    let foreign = SignedRelease::sign(&release, &stranger);
    let (ok, detail) = command(&cloud, "branch-m", "model_update", update(&foreign)).await;
    assert!(!ok && detail.contains("signature"), "{detail}");
    // Tampered after signing (a file hash swapped).
    let mut tampered = good.clone();
    let sha = &release.files["model.onnx"].sha256;
    tampered.release = tampered.release.replace(sha.as_str(), &"0".repeat(64));
    let (ok, detail) = command(&cloud, "branch-m", "model_update", update(&tampered)).await;
    assert!(!ok && detail.contains("signature"), "{detail}");
    // Older than the active one, without a rollback command (freeze/rollback attack).
    let (ok, detail) = command(&cloud, "branch-m", "model_update", update(&old)).await;
    assert!(!ok && detail.contains("older"), "{detail}");
    assert_eq!(node.model_version(), "1.0.0", "nothing changed");
    let (_, metrics) = node.get("/metrics").await;
    assert!(
        metrics.contains("edgedesk_model_changes_total{outcome=\"refused\"} 4"),
        "refusals are counted"
    );

    // A torn download: three good chunks and garbage after them. The node
    // keeps the good chunks and fetches the rest only.
    let model = &release.files["model.onnx"];
    let incoming = dir.path().join("models/incoming");
    std::fs::create_dir_all(&incoming).unwrap();
    let bytes = std::fs::read(bundle_dir().join("model.onnx")).unwrap();
    let mut torn = bytes[..3 * CHUNK_SIZE as usize].to_vec();
    torn.extend_from_slice(b"garbage written before a power cut");
    std::fs::write(incoming.join(format!("{}.part", model.sha256)), &torn).unwrap();
    let golden_before = edgedesk_nlu::model::golden_runs();
    let (ok, detail) = command(&cloud, "branch-m", "model_update", update(&good)).await;
    assert!(ok, "{detail}");
    assert_eq!(
        edgedesk_nlu::model::golden_runs(),
        golden_before + 1,
        "the new model ran its golden set once (it ran twice before)"
    );
    let fetched: u64 = release.files.values().map(|f| f.size).sum::<u64>() - 3 * CHUNK_SIZE;
    assert_eq!(
        detail,
        format!("1.1.0 active ({fetched} bytes fetched)"),
        "resumed from the last verified byte"
    );
    assert_eq!(node.model_version(), "1.1.0");
    // Sent again: already active, nothing fetched.
    let (ok, detail) = command(&cloud, "branch-m", "model_update", update(&good)).await;
    assert!(ok && detail.contains("already active"), "{detail}");

    // An explicit rollback goes back to the kept version.
    let (ok, detail) = command(
        &cloud,
        "branch-m",
        "model_rollback",
        serde_json::json!({ "rollout": "manual" }),
    )
    .await;
    assert!(ok, "{detail}");
    assert_eq!(node.model_version(), "1.0.0");
    // After a rollback the floor stays the newest version the node has run
    // (issue 11, finding 12): a validly signed 1.0.5 is an old release too.
    let between = cloud
        .publish(&bundle_version(work.path(), "1.0.5"))
        .await
        .signed;
    let (ok, detail) = command(&cloud, "branch-m", "model_update", update(&between)).await;
    assert!(!ok && detail.contains("older than 1.1.0"), "{detail}");
    // A signed release of another model is not this node's.
    let other_dir = bundle_version(work.path(), "2.0.0");
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(other_dir.join("manifest.json")).unwrap())
            .unwrap();
    m["name"] = "another-model".into();
    std::fs::write(
        other_dir.join("manifest.json"),
        serde_json::to_vec_pretty(&m).unwrap(),
    )
    .unwrap();
    let other = cloud.publish(&other_dir).await.signed;
    let (ok, detail) = command(&cloud, "branch-m", "model_update", update(&other)).await;
    assert!(!ok && detail.contains("another-model"), "{detail}");
    assert_eq!(node.model_version(), "1.0.0", "nothing changed");
    // Forward to the newest again is allowed.
    let (ok, detail) = command(&cloud, "branch-m", "model_update", update(&good)).await;
    assert!(ok, "{detail}");
    assert_eq!(node.model_version(), "1.1.0");
    let (ok, detail) = command(
        &cloud,
        "branch-m",
        "model_rollback",
        serde_json::json!({ "rollout": "manual", "to_version": "7.7.7" }),
    )
    .await;
    assert!(!ok && detail.contains("not kept"), "{detail}");
    node.stop().await;
    cloud.token.cancel();
}

fn spawn_node(
    cloud: &Cloud,
    node: &str,
    dir: &std::path::Path,
    port: u16,
    token: &str,
    crash_at: Option<&str>,
) -> std::process::Child {
    let q = |p: &std::path::Path| format!("{:?}", p.to_string_lossy());
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_systest-edge-node"));
    cmd.arg("serve")
        .env("EDGEDESK_SERVER__LISTEN", format!("\"127.0.0.1:{port}\""))
        .env("EDGEDESK_STORE__PATH", q(&dir.join("edge.db")))
        .env("EDGEDESK_NLU__BUNDLE", q(&bundle_dir()))
        .env("EDGEDESK_CLOUD__ENABLED", "true")
        .env(
            "EDGEDESK_CLOUD__CONTROLLER_URL",
            format!("{:?}", cloud.ctl.base_url),
        )
        .env(
            "EDGEDESK_CLOUD__CA_SHA256",
            format!("{:?}", cloud.ctl.ca_sha256.as_deref().unwrap_or_default()),
        )
        .env("EDGEDESK_CLOUD__NODE_ID", format!("{node:?}"))
        .env("EDGEDESK_CLOUD__ENROLL_TOKEN", format!("{token:?}"))
        .env(
            "EDGEDESK_CLOUD__IDENTITY_PATH",
            q(&dir.join("identity.json")),
        )
        .env("EDGEDESK_CLOUD__HEARTBEAT_SECS", "1")
        .env("ORT_DYLIB_PATH", ort_path())
        .env_remove("EDGEDESK_MODEL_CRASH_AT")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    if let Some(step) = crash_at {
        cmd.env("EDGEDESK_MODEL_CRASH_AT", step);
    }
    cmd.spawn().expect("edge-node starts")
}

async fn heartbeat_version(cloud: &Cloud, node: &str) -> String {
    cloud.node(node).await["heartbeat"]["model_version"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_every_step_of_an_update_leaves_a_working_model() {
    let cloud = Cloud::start().await;
    let work = tempfile::tempdir().unwrap();
    let release = cloud
        .publish(&bundle_version(work.path(), "1.1.0"))
        .await
        .signed;
    for step in edge_node::models::STEPS {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let node = format!("branch-{step}");
        let node = node.as_str();
        let token = cloud.token(node).await;
        let mut child = spawn_node(&cloud, node, dir.path(), port, &token, Some(step));
        eventually(30, &format!("{step}: node online"), || async {
            heartbeat_version(&cloud, node).await == "1.0.0"
        })
        .await;
        let cmd = cloud
            .post(
                &format!("/api/v1/nodes/{node}/commands"),
                serde_json::json!({ "kind": "model_update", "args": update(&release) }),
            )
            .await;
        let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
            .await
            .unwrap();
        assert!(!status.success(), "{step}: the node died ({status:?})");
        // Restarted without the hook: it serves, on a model that loads.
        let mut child = spawn_node(&cloud, node, dir.path(), port, &token, None);
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut ready = false;
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(addr).await.is_ok()
                && http_get(addr, "/readyz").await.0 == 200
            {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(ready, "{step}: the node restarts");
        let mut ws = connect_url(&format!("ws://127.0.0.1:{port}/ws"), None).await;
        start_session(&mut ws).await;
        let (_, frames) = say(&mut ws, &msg("I lost my card")).await;
        assert!(
            frames
                .iter()
                .any(|f| matches!(f, edgedesk_common::chat::ServerFrame::Reply { .. })),
            "{step}: the node answers after the crash"
        );
        // The controller re-sends the unacknowledged command; the update completes.
        let id = cmd["id"].as_str().unwrap().to_owned();
        eventually(
            60,
            &format!("{step}: update completes after restart"),
            || async {
                let list = cloud.get(&format!("/api/v1/nodes/{node}/commands")).await;
                list.as_array()
                    .unwrap()
                    .iter()
                    .any(|c| c["id"] == id.as_str() && c["ok"] == true)
            },
        )
        .await;
        eventually(10, &format!("{step}: heartbeat shows 1.1.0"), || async {
            heartbeat_version(&cloud, node).await == "1.1.0"
        })
        .await;
        child.kill().unwrap();
        child.wait().unwrap();
    }
    cloud.token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn swaps_under_load_lose_no_message_and_flows_keep_their_model() {
    let cloud = Cloud::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node = edge_with(&cloud, &dir, "branch-s", |c| {
        c.server.rate_limit_per_sec = 1000.0;
        c.server.rate_limit_burst = 1000;
    })
    .await;
    cloud.wait_online("branch-s", 20).await;
    let work = tempfile::tempdir().unwrap();
    let good = cloud
        .publish(&bundle_version(work.path(), "1.1.0"))
        .await
        .signed;

    // A visitor inside the lost-card flow when the model changes…
    let mut inflow = node.connect().await;
    start_session(&mut inflow).await;
    say(&mut inflow, &msg("I lost my card")).await;
    let (ok, detail) = command(&cloud, "branch-s", "model_update", update(&good)).await;
    assert!(ok, "{detail}");
    let models = node.models().clone();
    assert_eq!(models.health().version, "1.1.0");
    // …finishes the flow on the model it started with (nothing counted for 1.1.0)…
    let (_, replies) = say(&mut inflow, &msg("4321")).await;
    assert!(
        matches!(&replies[0], edgedesk_common::chat::ServerFrame::Reply { state, .. }
            if *state == edgedesk_common::chat::ChatState::InFlow),
        "{replies:?}"
    );
    assert_eq!(models.health().turns, 0, "the flow's turn ran on 1.0.0");
    // …while a new conversation is on the new model.
    let mut fresh = node.connect().await;
    start_session(&mut fresh).await;
    say(&mut fresh, &msg("when will my card arrive")).await;
    assert_eq!(models.health().turns, 1);

    // Load: 8 visitors keep talking while the model goes back and forth.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut visitors = Vec::new();
    for v in 0..8 {
        let (url, stop) = (node.ws_url(), stop.clone());
        visitors.push(tokio::spawn(async move {
            let mut ws = connect_url(&url, None).await;
            start_session(&mut ws).await;
            let mut answered = 0u32;
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) || i < 5 {
                // `say` panics unless the line is acknowledged and answered.
                let (_, replies) = say(
                    &mut ws,
                    &msg(&format!("visitor {v} asks about card fees {i}")),
                )
                .await;
                assert!(!replies.is_empty());
                answered += 1;
                i += 1;
            }
            // Kept open until the metrics are read (a dropped socket counts).
            (answered, ws)
        }));
    }
    let mut swaps = 0;
    for _ in 0..2 {
        let (ok, detail) = command(
            &cloud,
            "branch-s",
            "model_rollback",
            serde_json::json!({ "rollout": "load" }),
        )
        .await;
        assert!(ok, "{detail}");
        let (ok, detail) = command(&cloud, "branch-s", "model_update", update(&good)).await;
        assert!(ok, "{detail}");
        swaps += 2;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut total = 0;
    let mut sockets = Vec::new();
    for v in visitors {
        let (n, ws) = v.await.expect("no visitor saw an error");
        total += n;
        sockets.push(ws);
    }
    assert!(total >= 40, "{total} lines answered across {swaps} swaps");
    let (_, metrics) = node.get("/metrics").await;
    let rejected: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("edgedesk_rejected_inputs_total{"))
        .collect();
    assert!(!rejected.is_empty(), "the counters are published");
    assert!(
        rejected.iter().all(|l| l.ends_with(" 0")),
        "no message was rejected during the swaps: {rejected:?}"
    );
    drop(sockets);
    node.stop().await;
    cloud.token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_cut_mid_download_resumes_from_the_last_verified_chunk() {
    let quic_port = free_port();
    let upstream: std::net::SocketAddr = format!("127.0.0.1:{quic_port}").parse().unwrap();
    // The link dies after ~3 MB have come down and stays dead for 8 s
    // (longer than the node's QUIC idle timeout).
    let proxy = edgedesk_systest::proxy::UdpCutProxy::start(
        upstream,
        3_000_000,
        edge_node::models::fetch::IDLE_TIMEOUT + Duration::from_secs(2),
    )
    .await;
    let cloud = Cloud::start_with(|c| {
        c.models.quic_listen = format!("127.0.0.1:{quic_port}");
        c.models.advertise_port = proxy.port;
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let node = edge(&cloud, &dir, "branch-c").await;
    cloud.wait_online("branch-c", 20).await;
    let work = tempfile::tempdir().unwrap();
    let release = cloud
        .publish(&bundle_version(work.path(), "1.1.0"))
        .await
        .signed;
    let parsed: edgedesk_common::release::Release = serde_json::from_str(&release.release).unwrap();
    let whole: u64 = parsed.files.values().map(|f| f.size).sum();
    let (ok, detail) = command(&cloud, "branch-c", "model_update", update(&release)).await;
    assert!(ok, "{detail}");
    let fetched: u64 = detail
        .split(['(', ' '])
        .find_map(|w| w.parse().ok())
        .expect("bytes fetched in the report");
    assert!(
        fetched < whole && fetched + CHUNK_SIZE <= whole,
        "the second connection fetched only what was missing: {fetched} of {whole}"
    );
    assert_eq!(node.model_version(), "1.1.0");
    node.stop().await;
    cloud.token.cancel();
}
