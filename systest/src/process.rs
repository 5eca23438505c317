//! A real controller process for tests that kill it (`SIGKILL`) and start it
//! again on the same data, ports and broker; and the agents' console as a
//! client sees it (login, the console WebSocket) for any controller address.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::{ConsoleWs, FRAME_WAIT, controller_http, wss_connect};

/// The password every test agent gets.
pub const AGENT_PASSWORD: &str = "a long enough password";

/// A `cloud-controller serve` child process.
pub struct CtlProcess {
    pub child: Child,
    pub http: u16,
    pub mqtt: u16,
    pub token: String,
    /// The controller's CA (what clients trust for its HTTPS).
    pub ca_pem: String,
    bin: PathBuf,
    dir: PathBuf,
    extra: Vec<(String, String)>,
}

fn spawn(bin: &Path, dir: &Path, http: u16, mqtt: u16, extra: &[(String, String)]) -> Child {
    let mut cmd = Command::new(bin);
    cmd.arg("serve")
        .env("EDGEDESK_CC_HTTP__LISTEN", format!("\"127.0.0.1:{http}\""))
        .env("EDGEDESK_CC_MQTT__LISTEN", format!("\"127.0.0.1:{mqtt}\""))
        .env("EDGEDESK_CC_MODELS__QUIC_LISTEN", "\"127.0.0.1:0\"")
        .envs(crate::store_env(dir))
        .env("EDGEDESK_CC_FLEET__HEARTBEAT_TIMEOUT_SECS", "3")
        .env("EDGEDESK_CC_LOG__LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in extra {
        cmd.env(k, v);
    }
    cmd.spawn().expect("controller starts")
}

impl CtlProcess {
    /// Start `bin` on `dir` and wait until it is healthy.
    pub async fn start(
        bin: &Path,
        dir: &Path,
        http: u16,
        mqtt: u16,
        extra: &[(&str, String)],
    ) -> CtlProcess {
        let extra: Vec<(String, String)> = extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        let child = spawn(bin, dir, http, mqtt, &extra);
        let mut p = CtlProcess {
            child,
            http,
            mqtt,
            token: String::new(),
            ca_pem: String::new(),
            bin: bin.to_owned(),
            dir: dir.to_owned(),
            extra,
        };
        p.wait_healthy().await;
        p
    }

    async fn wait_healthy(&mut self) {
        for _ in 0..200 {
            if let Ok(ca) = std::fs::read_to_string(self.dir.join("mqtt-ca.pem")) {
                let up = controller_http(&ca)
                    .get(format!("{}/healthz", self.base()))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if up {
                    self.ca_pem = ca;
                    self.token = std::fs::read_to_string(self.dir.join("admin-token"))
                        .unwrap()
                        .trim()
                        .to_owned();
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        panic!("controller never became healthy");
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().unwrap();
    }

    /// Start again on the same data, ports and settings.
    pub async fn restart(&mut self) {
        self.child = spawn(&self.bin, &self.dir, self.http, self.mqtt, &self.extra);
        self.wait_healthy().await;
    }

    pub fn base(&self) -> String {
        format!("https://127.0.0.1:{}", self.http)
    }

    /// An edge node's configuration (state in `dir`) enrolled with this
    /// controller as `node_id`, heartbeating every second.
    pub async fn node_config(
        &self,
        dir: &tempfile::TempDir,
        node_id: &str,
    ) -> edge_node::config::Config {
        let mut c = crate::config(dir);
        c.cloud.enabled = true;
        c.cloud.controller_url = self.base();
        c.cloud.ca_sha256 = edgedesk_support::tls::ca_sha256(&self.ca_pem).unwrap();
        c.cloud.node_id = node_id.into();
        c.cloud.enroll_token = self.token_for(node_id).await;
        c.cloud.identity_path = dir.path().join("identity.json");
        c.cloud.heartbeat_secs = 1;
        c
    }

    /// An operator API call; `None` when it fails (down, or not 2xx).
    pub async fn api(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Option<serde_json::Value> {
        let mut r = controller_http(&self.ca_pem)
            .request(method, format!("{}{path}", self.base()))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.ok()?;
        if !resp.status().is_success() {
            // Said on stderr (shown for a failing test): why it was refused.
            eprintln!(
                "{path}: {} {}",
                resp.status(),
                resp.text().await.unwrap_or_default()
            );
            return None;
        }
        resp.json().await.ok()
    }

    pub async fn token_for(&self, node: &str) -> String {
        let v = self
            .api(
                reqwest::Method::POST,
                "/api/v1/tokens",
                Some(serde_json::json!({ "node_id": node })),
            )
            .await
            .unwrap();
        v["token"].as_str().unwrap().to_owned()
    }

    /// Create a console account (password [`AGENT_PASSWORD`]).
    pub async fn create_agent(&self, username: &str, role: &str, capacity: u32) {
        let created = self
            .api(
                reqwest::Method::POST,
                "/api/v1/agents",
                Some(
                    serde_json::json!({ "username": username, "display_name": username,
                    "role": role, "password": AGENT_PASSWORD, "languages": ["en"],
                    "capacity": capacity }),
                ),
            )
            .await;
        assert!(created.is_some(), "agent {username} created");
    }

    pub async fn node_online(&self, node: &str) -> bool {
        self.api(reqwest::Method::GET, &format!("/api/v1/nodes/{node}"), None)
            .await
            .is_some_and(|n| n["online"] == true)
    }
}

impl Drop for CtlProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Log `username` in at the controller `base` (`https://host:port`, CA
/// `ca_pem`); the session cookie (`name=value`).
pub async fn console_login(base: &str, ca_pem: &str, username: &str) -> String {
    let r = controller_http(ca_pem)
        .post(format!("{base}/console/api/login"))
        .json(&serde_json::json!({ "username": username, "password": AGENT_PASSWORD }))
        .send()
        .await
        .unwrap();
    assert!(
        r.status().is_success(),
        "login of {username}: {}",
        r.status()
    );
    r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned()
}

/// A console API call at `base` as the holder of `cookie`, with the
/// session's CSRF token: the status and the body as JSON (null if none).
pub async fn console_call(
    base: &str,
    ca_pem: &str,
    cookie: &str,
    method: reqwest::Method,
    path: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let http = controller_http(ca_pem);
    let me: serde_json::Value = http
        .get(format!("{base}/console/api/me"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let r = http
        .request(method, format!("{base}{path}"))
        .header("cookie", cookie)
        .header("x-csrf-token", me["csrf"].as_str().unwrap())
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

/// The console WebSocket at `base` for the session `cookie`, set online.
pub async fn console_socket(base: &str, ca_pem: &str, cookie: &str) -> ConsoleWs {
    let host = base.trim_start_matches("https://");
    let mut req = format!("wss://{host}/console/ws")
        .into_client_request()
        .unwrap();
    req.headers_mut().insert("cookie", cookie.parse().unwrap());
    let mut ws = wss_connect(req, ca_pem).await.unwrap();
    console_send(
        &mut ws,
        serde_json::json!({ "type": "presence", "state": "online" }),
    )
    .await;
    ws
}

pub async fn console_send(ws: &mut ConsoleWs, v: serde_json::Value) {
    ws.send(Message::text(v.to_string())).await.unwrap();
}

/// The next console frame of type `kind` (others are skipped; an `error`
/// frame fails the test).
pub async fn console_next(ws: &mut ConsoleWs, kind: &str) -> serde_json::Value {
    loop {
        let msg = tokio::time::timeout(FRAME_WAIT, ws.next())
            .await
            .unwrap_or_else(|_| panic!("no {kind} frame within {FRAME_WAIT:?}"))
            .expect("open")
            .expect("ok");
        if let Message::Text(t) = msg {
            let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
            if v["type"] == kind {
                return v;
            }
            assert_ne!(v["type"], "error", "console error: {v}");
        }
    }
}
