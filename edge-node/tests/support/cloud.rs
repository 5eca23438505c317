//! A cloud controller in the test process (embedded broker, SQLite) and edge
//! nodes enrolled with it, plus console helpers for agent tests.

use std::time::Duration;

use cloud_controller::config::Config as CcConfig;

use super::*;

pub fn free_port() -> u16 {
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
        Cloud::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut CcConfig)) -> Cloud {
        if std::env::var("TEST_LOG").is_ok() {
            let _ = tracing_subscriber::fmt().with_env_filter("info").try_init();
        }
        let dir = tempfile::tempdir().unwrap();
        let mut c = CcConfig::default();
        c.http.listen = "127.0.0.1:0".into();
        c.mqtt.listen = format!("127.0.0.1:{}", free_port());
        c.models.quic_listen = "127.0.0.1:0".into();
        c.store.data_dir = dir.path().to_owned();
        c.fleet.heartbeat_timeout_secs = 3;
        c.sync.command_retry_secs = 1;
        tweak(&mut c);
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

    /// A node as the API shows it, or null while it does not exist yet.
    pub async fn node(&self, id: &str) -> serde_json::Value {
        let r = self
            .http
            .get(self.url(&format!("/api/v1/nodes/{id}")))
            .bearer_auth(&self.ctl.admin_token)
            .send()
            .await
            .unwrap();
        if r.status().is_success() {
            r.json().await.unwrap()
        } else {
            serde_json::Value::Null
        }
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

impl Cloud {
    /// Create a console agent through the operator API.
    pub async fn create_agent(
        &self,
        username: &str,
        name: &str,
        languages: &[&str],
        capacity: u32,
    ) {
        let r = self
            .http
            .post(self.url("/api/v1/agents"))
            .bearer_auth(&self.ctl.admin_token)
            .json(&serde_json::json!({ "username": username, "display_name": name, "role": "agent",
                "password": "a long enough password", "languages": languages, "capacity": capacity }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }

    /// Log `username` in; the session cookie (`name=value`).
    pub async fn console_cookie(&self, username: &str) -> String {
        let r = self
            .http
            .post(self.url("/console/api/login"))
            .json(
                &serde_json::json!({ "username": username, "password": "a long enough password" }),
            )
            .send()
            .await
            .unwrap();
        r.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned()
    }

    /// The console WebSocket of a logged-in agent, set online.
    pub async fn console(&self, username: &str) -> Ws {
        use futures_util::SinkExt;
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let cookie = self.console_cookie(username).await;
        let mut req = format!("ws://{}/console/ws", self.ctl.http_addr)
            .into_client_request()
            .unwrap();
        req.headers_mut().insert("cookie", cookie.parse().unwrap());
        let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        ws.send(tokio_tungstenite::tungstenite::Message::text(
            serde_json::json!({ "type": "presence", "state": "online" }).to_string(),
        ))
        .await
        .unwrap();
        ws
    }
}
