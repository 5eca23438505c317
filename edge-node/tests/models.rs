//! The node's model manager through the real command path (controller REST →
//! command queue → MQTT → node → acknowledgement): what it refuses (TUF's
//! threat model: unsigned, foreign key, tampered, older), resuming a torn
//! download, and rollback.

mod support;

use std::time::Duration;

use edgedesk_common::release::{CHUNK_SIZE, SignedRelease};
use support::cloud::*;
use support::*;

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
    cloud
        .eventually(20, "online", || async {
            cloud.node("branch-m").await["online"] == true
        })
        .await;
    let work = tempfile::tempdir().unwrap();
    let good = cloud.publish(&bundle_version(work.path(), "1.1.0")).signed;
    let old = cloud.publish(&bundle_version(work.path(), "0.9.0")).signed;

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
    assert_eq!(
        node.state().model.get().manifest().version.to_string(),
        "1.0.0",
        "nothing changed"
    );
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
    let (ok, detail) = command(&cloud, "branch-m", "model_update", update(&good)).await;
    assert!(ok, "{detail}");
    let fetched: u64 = release.files.values().map(|f| f.size).sum::<u64>() - 3 * CHUNK_SIZE;
    assert_eq!(
        detail,
        format!("1.1.0 active ({fetched} bytes fetched)"),
        "resumed from the last verified byte"
    );
    assert_eq!(
        node.state().model.get().manifest().version.to_string(),
        "1.1.0"
    );
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
    assert_eq!(
        node.state().model.get().manifest().version.to_string(),
        "1.0.0"
    );
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
    cloud_url: &str,
    node: &str,
    dir: &std::path::Path,
    port: u16,
    token: &str,
    crash_at: Option<&str>,
) -> std::process::Child {
    let q = |p: &std::path::Path| format!("{:?}", p.to_string_lossy());
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_edge-node"));
    cmd.arg("serve")
        .env("EDGEDESK_SERVER__LISTEN", format!("\"127.0.0.1:{port}\""))
        .env("EDGEDESK_STORE__PATH", q(&dir.join("edge.db")))
        .env("EDGEDESK_NLU__BUNDLE", q(&bundle_dir()))
        .env("EDGEDESK_CLOUD__ENABLED", "true")
        .env("EDGEDESK_CLOUD__CONTROLLER_URL", format!("{cloud_url:?}"))
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
    let release = cloud.publish(&bundle_version(work.path(), "1.1.0")).signed;
    for step in edge_node::models::STEPS {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let node = format!("branch-{step}");
        let node = node.as_str();
        let token = cloud.token(node).await;
        let mut child = spawn_node(&cloud.url(""), node, dir.path(), port, &token, Some(step));
        cloud
            .eventually(30, &format!("{step}: node online"), || async {
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
        let mut child = spawn_node(&cloud.url(""), node, dir.path(), port, &token, None);
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
        cloud
            .eventually(
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
        cloud
            .eventually(10, &format!("{step}: heartbeat shows 1.1.0"), || async {
                heartbeat_version(&cloud, node).await == "1.1.0"
            })
            .await;
        child.kill().unwrap();
        child.wait().unwrap();
    }
    cloud.token.cancel();
}
