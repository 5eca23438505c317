//! Shadow mode end to end, with real parts: a controller (rollout driver,
//! QUIC model service) and two edge nodes with their own ONNX Runtime
//! sessions. A candidate that disagrees with the active model on purpose runs
//! in shadow on live turns, answers nobody, and is refused by the shadow
//! gate before any node is updated; a candidate that agrees passes the gate
//! and rolls out. `rollout status` (REST) and the supervisor's dashboard
//! show the shadow figures.

use std::time::Duration;

use edgedesk_systest::cloud::*;
use edgedesk_systest::*;

const NODES: [&str; 2] = ["n00", "n01"];

/// Visitor lines the default model answers (banking, English and Chinese).
const LINES: [&str; 6] = [
    "I lost my card",
    "my card has not arrived yet",
    "how do I top up my account",
    "my pin is blocked",
    "我的卡丢了",
    "转账手续费是多少",
];

async fn create(cloud: &Cloud, body: serde_json::Value) -> String {
    let v = cloud.post("/api/v1/rollouts", body).await;
    v["id"].as_str().expect("a rollout id").to_owned()
}

/// Poll rollout `id` until it ends; its last view.
async fn finished(cloud: &Cloud, id: &str) -> serde_json::Value {
    let path = format!("/api/v1/rollouts/{id}");
    eventually(60, "the rollout ended", || async {
        let v = cloud.get(&path).await;
        v["phase"] == "succeeded" || v["phase"] == "aborted"
    })
    .await;
    cloud.get(&path).await
}

/// Wait until every node acknowledged its `model_shadow` (the candidate is
/// loaded and comparing), then send visitor turns to each node.
async fn shadow_traffic(cloud: &Cloud, nodes: &[TestNode], rollout: &str) {
    for id in NODES {
        eventually(
            30,
            &format!("{id} runs the candidate in shadow"),
            || async {
                cloud.commands(id).await.iter().any(|c| {
                    c["kind"] == "model_shadow"
                        && c["ok"] == true
                        && c["args"]["rollout"] == rollout
                })
            },
        )
        .await;
    }
    for node in nodes {
        let mut ws = node.connect().await;
        start_session(&mut ws).await;
        for line in LINES.iter().cycle().take(12) {
            say(&mut ws, &msg(line)).await;
        }
    }
    // The counts reach the controller with the next heartbeats.
    let path = format!("/api/v1/rollouts/{rollout}");
    eventually(20, "shadow counts reported", || async {
        cloud.get(&path).await["shadow"]["turns"]
            .as_u64()
            .unwrap_or(0)
            >= 24
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_disagreeing_candidate_is_refused_in_shadow_and_an_agreeing_one_rolls_out() {
    let cloud = Cloud::start_with(|c| c.models.tick_ms = 100).await;
    let mut nodes = Vec::new();
    let mut dirs = Vec::new();
    for id in NODES {
        let dir = tempfile::tempdir().unwrap();
        // Twelve visitor lines in a row per node: above the per-connection
        // burst (10) when replies come fast, which is not what this tests.
        nodes.push(edge_with(&cloud, &dir, id, |c| c.server.rate_limit_burst = 100).await);
        dirs.push(dir);
        cloud.wait_online(id, 20).await;
    }
    let work = tempfile::tempdir().unwrap();
    cloud
        .publish(&disagreeing_bundle(work.path(), "1.2.0"))
        .await;
    cloud.publish(&bundle_version(work.path(), "1.1.0")).await;

    // 1. The candidate that renames every intent: refused by the gate.
    let id = create(
        &cloud,
        serde_json::json!({ "model": "1.2.0", "waves": ["1", "100%"], "bake_secs": 0,
            "shadow_secs": 8, "shadow_min_turns": 20 }),
    )
    .await;
    assert_eq!(
        cloud.get(&format!("/api/v1/rollouts/{id}")).await["phase"],
        "shadow"
    );
    shadow_traffic(&cloud, &nodes, &id).await;
    // Visitors were answered by the active model all along.
    let mut ws = nodes[0].connect().await;
    start_session(&mut ws).await;
    let (_, r) = say(&mut ws, &msg("I lost my card")).await;
    assert!(reply_text(&r[0]).to_lowercase().contains("card"), "{r:?}");
    let done = finished(&cloud, &id).await;
    assert_eq!(done["phase"], "aborted", "{done}");
    assert!(
        done["detail"]
            .as_str()
            .unwrap()
            .contains("shadow gate: the candidate agreed with the active model on"),
        "{done}"
    );
    assert_eq!(done["updated"], 0, "{done}");
    let shadow = &done["shadow"];
    assert!(shadow["turns"].as_u64().unwrap() >= 24, "{shadow}");
    assert!(shadow["agreement"].as_f64().unwrap() < 0.5, "{shadow}");
    assert_eq!(shadow["nodes_reporting"], 2, "{shadow}");
    assert!(shadow["candidate_us"].as_f64().unwrap() > 0.0, "{shadow}");
    for (node, id) in nodes.iter().zip(NODES) {
        assert_eq!(node.model_version(), "1.0.0", "{id} kept its model");
        assert!(
            !cloud
                .commands(id)
                .await
                .iter()
                .any(|c| c["kind"] == "model_update"),
            "{id} was never told to update"
        );
    }

    // The supervisor's dashboard lists the rollout with its shadow figures.
    cloud
        .create_account("sam", "Sam", "supervisor", &["en"], 1)
        .await;
    let cookie = cloud.console_cookie("sam").await;
    let dash = cloud.console_get(&cookie, "/console/api/dashboard").await;
    let listed = &dash["rollouts"][0];
    assert_eq!(listed["id"], id.as_str(), "{dash}");
    assert_eq!(listed["shadow"]["turns"], shadow["turns"], "{dash}");

    // 2. The same model under a new version: agrees, passes, rolls out.
    let id = create(
        &cloud,
        // Latency is the engine tests' concern; on a busy CI box the same
        // model's timings can differ by more than the default margin.
        serde_json::json!({ "model": "1.1.0", "waves": ["1", "100%"], "bake_secs": 0,
            "shadow_secs": 8, "shadow_min_turns": 20, "shadow_latency_margin": 5.0 }),
    )
    .await;
    shadow_traffic(&cloud, &nodes, &id).await;
    let done = finished(&cloud, &id).await;
    assert_eq!(done["phase"], "succeeded", "{done}");
    assert_eq!(done["shadow"]["agreement"], 1.0, "{done}");
    assert_eq!(done["shadow"]["oos_disagreements"], 0, "{done}");
    for node in &nodes {
        assert_eq!(node.model_version(), "1.1.0");
    }
    drop(ws);
    tokio::time::timeout(Duration::from_secs(10), async {
        for n in nodes {
            n.stop().await;
        }
    })
    .await
    .expect("nodes stop");
    cloud.token.cancel();
}
