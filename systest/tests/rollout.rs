//! Model rollouts end to end with real parts: a controller (embedded broker,
//! QUIC model service, rollout driver) and 20 edge nodes, each with its own
//! ONNX Runtime sessions and SQLite store, in one process.

use std::time::Duration;

use edgedesk_systest::cloud::*;
use edgedesk_systest::*;

const NODES: usize = 20;

async fn start_rollout(cloud: &Cloud, body: serde_json::Value) -> String {
    let r = cloud
        .http
        .post(cloud.url("/api/v1/rollouts"))
        .bearer_auth(&cloud.ctl.admin_token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    let created: serde_json::Value = r.json().await.unwrap();
    created["id"].as_str().unwrap().to_owned()
}

/// Poll rollout `id` until `phase` (or a terminal phase); its last view.
async fn wait_phase(cloud: &Cloud, id: &str, phase: &str) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    for _ in 0..600 {
        last = cloud.get(&format!("/api/v1/rollouts/{id}")).await;
        if last["phase"] == phase || last["phase"] == "succeeded" || last["phase"] == "aborted" {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("rollout never reached {phase}: {last}");
}

struct Fleet {
    nodes: Vec<(String, TestNode, tempfile::TempDir)>,
}

/// Enrol `NODES` nodes labelled kind=bank; `canary_tweak` adjusts the first.
async fn fleet(cloud: &Cloud, canary_tweak: impl FnOnce(&mut edge_node::config::Config)) -> Fleet {
    let mut nodes = Vec::new();
    let mut tweak = Some(canary_tweak);
    for i in 0..NODES {
        let id = format!("n{i:02}");
        let dir = tempfile::tempdir().unwrap();
        let node = match (i, if i == 0 { tweak.take() } else { None }) {
            (0, Some(t)) => edge_with(cloud, &dir, &id, t).await,
            _ => edge(cloud, &dir, &id).await,
        };
        cloud.wait_online(&id, 20).await;
        let r = cloud
            .http
            .put(cloud.url(&format!("/api/v1/nodes/{id}/labels")))
            .bearer_auth(&cloud.ctl.admin_token)
            .json(&serde_json::json!({ "labels": { "kind": "bank", "region": "emea" } }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        nodes.push((id, node, dir));
    }
    // A node outside the selector.
    let dir = tempfile::tempdir().unwrap();
    let other = edge(cloud, &dir, "retail-1").await;
    nodes.push(("retail-1".into(), other, dir));
    cloud.wait_online("retail-1", 20).await;
    Fleet { nodes }
}

fn version(node: &TestNode) -> String {
    node.model_version()
}

async fn run_rollout(cloud: &Cloud, body: serde_json::Value) -> serde_json::Value {
    let id = start_rollout(cloud, body).await;
    wait_phase(cloud, &id, "succeeded").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_wave_succeeds_and_the_fleet_runs_the_new_model() {
    let cloud = Cloud::start_with(|c| c.models.tick_ms = 100).await;
    let fleet = fleet(&cloud, |_| {}).await;
    let work = tempfile::tempdir().unwrap();
    let published = cloud.publish(&bundle_version(work.path(), "1.1.0")).await;
    assert_eq!(published.version, "1.1.0");
    let done = run_rollout(
        &cloud,
        serde_json::json!({ "model": "1.1.0", "selector": { "kind": "bank" },
            "waves": ["1", "25%", "100%"], "bake_secs": 0, "failure_threshold": "0" }),
    )
    .await;
    assert_eq!(done["phase"], "succeeded", "{done}");
    assert_eq!(done["updated"], NODES, "{done}");
    assert_eq!(done["total"], NODES);
    for (id, node, _) in &fleet.nodes {
        let want = if id.starts_with('n') {
            "1.1.0"
        } else {
            "1.0.0"
        };
        assert_eq!(version(node), want, "{id}");
    }
    // The new model answers, and the old one is kept for a rollback.
    let (_, node, dir) = &fleet.nodes[3];
    let mut ws = node.connect().await;
    start_session(&mut ws).await;
    let (_, frames) = say(&mut ws, &msg("my card has not arrived yet")).await;
    assert!(!frames.is_empty());
    let pointer: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("models/active.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(pointer["active"], "1.1.0");
    assert_eq!(pointer["kept"], serde_json::json!(["1.1.0", "1.0.0"]));
    // Heartbeats report the model and its post-swap watch.
    eventually(10, "heartbeat with the new model", || async {
        cloud.node("n03").await["heartbeat"]["model_health"]["version"] == "1.1.0"
    })
    .await;

    // The next version: the operator aborts during the first bake; the two
    // updated nodes go back to 1.1.0 and nobody else is asked.
    cloud.publish(&bundle_version(work.path(), "1.3.0")).await;
    let id = start_rollout(
        &cloud,
        serde_json::json!({ "model": "1.3.0", "selector": { "kind": "bank" },
            "waves": ["2", "100%"], "bake_secs": 600 }),
    )
    .await;
    let baking = wait_phase(&cloud, &id, "baking").await;
    assert_eq!(
        (baking["phase"].as_str(), baking["updated"].as_u64()),
        (Some("baking"), Some(2))
    );
    assert_eq!(version(&fleet.nodes[0].1), "1.3.0");
    let r = cloud
        .http
        .post(cloud.url(&format!("/api/v1/rollouts/{id}/abort")))
        .bearer_auth(&cloud.ctl.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let done = wait_phase(&cloud, &id, "aborted").await;
    assert_eq!(done["phase"], "aborted", "{done}");
    assert_eq!(done["rolled_back"], 2, "{done}");
    for (id, node, _) in &fleet.nodes {
        let want = if id.starts_with('n') {
            "1.1.0"
        } else {
            "1.0.0"
        };
        assert_eq!(version(node), want, "{id} after the abort");
    }
    let r = cloud
        .http
        .post(cloud.url(&format!("/api/v1/rollouts/{id}/resume")))
        .bearer_auth(&cloud.ctl.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409, "a finished rollout cannot be resumed");
    for (_, node, _) in fleet.nodes {
        node.stop().await;
    }
    cloud.token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_canary_failing_its_golden_set_aborts_and_nothing_else_changes() {
    let cloud = Cloud::start_with(|c| c.models.tick_ms = 100).await;
    // The new bundle passes its golden set at the controller, but the canary
    // (first in id order) runs with a stricter threshold under which one
    // golden line fails: as a model that misbehaves on one box would.
    let work = tempfile::tempdir().unwrap();
    let (bundle, strict) = harder_bundle(work.path(), "1.2.0");
    let fleet = fleet(&cloud, |c| c.nlu.confidence_threshold = strict).await;
    cloud.publish(&bundle).await;
    let done = run_rollout(
        &cloud,
        serde_json::json!({ "model": "edgedesk-intents@1.2.0", "selector": { "kind": "bank" },
            "waves": ["1", "50%", "100%"], "bake_secs": 0, "failure_threshold": "0" }),
    )
    .await;
    assert_eq!(done["phase"], "aborted", "{done}");
    assert!(
        done["detail"].as_str().unwrap().contains("failed"),
        "{done}"
    );
    assert_eq!(done["updated"], 0);
    let canary = &done["nodes"]["n00"];
    assert_eq!(canary["state"], "failed", "{done}");
    assert!(
        canary["reason"].as_str().unwrap().contains("golden"),
        "{canary}"
    );
    for (id, node, _) in &fleet.nodes {
        assert_eq!(version(node), "1.0.0", "{id} still on the old model");
        if id != "n00" && id.starts_with('n') {
            assert_eq!(
                done["nodes"][id]["state"], "skipped",
                "{id} never touched: {done}"
            );
        }
    }
    // The canary was asked and reported why; nobody else was asked.
    let canary_cmds = cloud.get("/api/v1/nodes/n00/commands").await;
    assert!(
        canary_cmds
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["kind"] == "model_update" && c["ok"] == false),
        "{canary_cmds}"
    );
    let cmds = cloud.get("/api/v1/nodes/n01/commands").await;
    assert!(
        cmds.as_array()
            .unwrap()
            .iter()
            .all(|c| c["kind"] != "model_update"),
        "{cmds}"
    );
    for (_, node, _) in fleet.nodes {
        node.stop().await;
    }
    cloud.token.cancel();
}

/// The multilingual bundle (`build/models/multilingual`, 2.0.0: n-gram
/// features plus the int8 encoder, input kind `text+tokens`) goes out by the
/// signed-release path like any other; afterwards the node answers a
/// colloquial Chinese question (one the linear 1.0.0 leaves unanswered today)
/// as it answers the plain one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_multilingual_model_rolls_out_and_understands_chinese() {
    let multilingual = repo_root().join("build/models/multilingual");
    assert!(
        multilingual.join("manifest.json").exists(),
        "no multilingual bundle; run scripts/provision.sh first"
    );
    let cloud = Cloud::start_with(|c| c.models.tick_ms = 100).await;
    let dir = tempfile::tempdir().unwrap();
    let node = edge(&cloud, &dir, "zh-1").await;
    cloud.wait_online("zh-1", 20).await;
    let r = cloud
        .http
        .put(cloud.url("/api/v1/nodes/zh-1/labels"))
        .bearer_auth(&cloud.ctl.admin_token)
        .json(&serde_json::json!({ "labels": { "lang": "zh" } }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A question in the words a mainland visitor types, and the same in the
    // words of the training rows: the second gives the reference answer.
    let ask = |text: &'static str| {
        let node = &node;
        async move {
            let mut ws = node.connect().await;
            send(&mut ws, &hello_in(edgedesk_common::chat::Lang::Zh)).await;
            recv(&mut ws).await;
            let (_, r) = say(&mut ws, &msg(text)).await;
            reply_text(&r[0]).to_owned()
        }
    };
    let colloquial = "快递员一直没送卡来";
    let reference = ask("我的新卡还没收到").await;
    assert_eq!(version(&node), "1.0.0");

    let published = cloud.publish(&multilingual).await;
    assert_eq!(published.version, "2.0.0");
    let done = run_rollout(
        &cloud,
        serde_json::json!({ "model": "2.0.0", "selector": { "lang": "zh" },
            "waves": ["1"], "bake_secs": 0, "failure_threshold": "0" }),
    )
    .await;
    assert_eq!(done["phase"], "succeeded", "{done}");
    assert_eq!(version(&node), "2.0.0");
    assert_eq!(ask(colloquial).await, reference);
    node.stop().await;
    cloud.token.cancel();
}
