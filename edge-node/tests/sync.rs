//! Edge ↔ cloud sync with real parts: a cloud controller (embedded rumqttd
//! broker, SQLite) and edge nodes in this process, talking MQTT over
//! loopback with sealed envelopes.

mod support;

use std::time::Duration;

use cloud_controller::config::Config as CcConfig;
use edgedesk_common::chat::ServerFrame;
use support::*;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Cloud {
    pub ctl: cloud_controller::Controller,
    pub token: tokio_util::sync::CancellationToken,
    pub http: reqwest::Client,
    pub _dir: tempfile::TempDir,
}

impl Cloud {
    pub async fn start() -> Cloud {
        let dir = tempfile::tempdir().unwrap();
        let mut c = CcConfig::default();
        c.http.listen = "127.0.0.1:0".into();
        c.mqtt.listen = format!("127.0.0.1:{}", free_port());
        c.store.data_dir = dir.path().to_owned();
        c.fleet.heartbeat_timeout_secs = 3;
        let token = tokio_util::sync::CancellationToken::new();
        let ctl = cloud_controller::run(c, token.clone())
            .await
            .expect("controller starts");
        Cloud {
            ctl,
            token,
            http: reqwest::Client::new(),
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.ctl.http_addr)
    }

    pub async fn get(&self, path: &str) -> serde_json::Value {
        let r = self
            .http
            .get(self.url(path))
            .bearer_auth(&self.ctl.admin_token)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().await.unwrap()
    }

    pub async fn post(&self, path: &str, body: serde_json::Value) -> serde_json::Value {
        let r = self
            .http
            .post(self.url(path))
            .bearer_auth(&self.ctl.admin_token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().await.unwrap()
    }

    pub async fn token(&self, node: &str) -> String {
        let v = self
            .post("/api/v1/tokens", serde_json::json!({ "node_id": node }))
            .await;
        v["token"].as_str().unwrap().to_owned()
    }

    /// Poll `f` until it returns true or `secs` pass.
    pub async fn eventually<F, Fut>(&self, secs: u64, what: &str, mut f: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        while tokio::time::Instant::now() < deadline {
            if f().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("timed out waiting for: {what}");
    }

    pub async fn events(&self, query: &str) -> Vec<serde_json::Value> {
        self.get(&format!("/api/v1/events?{query}"))
            .await
            .as_array()
            .unwrap()
            .clone()
    }
}

/// An edge node enrolled with `cloud`.
pub async fn edge(cloud: &Cloud, dir: &tempfile::TempDir, node_id: &str) -> TestNode {
    let mut c = config(dir);
    c.cloud.enabled = true;
    c.cloud.controller_url = format!("http://{}", cloud.ctl.http_addr);
    c.cloud.node_id = node_id.into();
    c.cloud.enroll_token = cloud.token(node_id).await;
    c.cloud.identity_path = dir.path().join("identity.json");
    c.cloud.heartbeat_secs = 1;
    c.cloud.ack_timeout_secs = 2;
    TestNode::start(c).await
}

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
    cloud
        .eventually(10, "both nodes online", || async {
            let nodes = cloud.get("/api/v1/nodes").await;
            nodes
                .as_array()
                .unwrap()
                .iter()
                .filter(|n| n["online"] == true)
                .count()
                == 2
        })
        .await;
    escalate(&a, "I want to talk to a human, call me on +44 20 7946 0958").await;
    escalate(&b, "转人工").await;
    cloud
        .eventually(10, "two escalations stored", || async {
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
    cloud
        .eventually(10, "outboxes drained", || async {
            a.state().store.outbox_depth().await.unwrap() == 0
                && b.state().store.outbox_depth().await.unwrap() == 0
        })
        .await;
    // Heartbeats carry the node's state.
    cloud
        .eventually(10, "heartbeat recorded", || async {
            let n = cloud.get("/api/v1/nodes/branch-a").await;
            n["heartbeat"]["model_name"] == "edgedesk-intents"
        })
        .await;
    // A command travels down, is executed once, and acknowledged.
    let cmd = cloud
        .post(
            "/api/v1/nodes/branch-a/commands",
            serde_json::json!({ "kind": "ping" }),
        )
        .await;
    let id = cmd["id"].as_str().unwrap().to_owned();
    cloud
        .eventually(10, "command acknowledged", || async {
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
