//! A cloud controller in the test process (embedded broker; SQLite, or
//! PostgreSQL with `EDGEDESK_TEST_POSTGRES`) and edge
//! nodes enrolled with it, plus console helpers for agent tests.
use cloud_controller::config::Config as CcConfig;

use super::*;

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
        c.store.postgres_url = cloud_controller::store::test_postgres_for(dir.path());
        c.fleet.heartbeat_timeout_secs = 3;
        c.sync.command_retry_secs = 1;
        tweak(&mut c);
        let token = tokio_util::sync::CancellationToken::new();
        let ctl = cloud_controller::run(c, token.clone())
            .await
            .expect("controller starts");
        Cloud {
            http: controller_http(ctl.ca_pem.as_deref().expect("the controller serves HTTPS")),
            ctl,
            token,
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.ctl.base_url)
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

    /// Wait until the registry shows `id` online; panics after `secs`.
    pub async fn wait_online(&self, id: &str, secs: u64) {
        eventually(secs, &format!("{id} online"), || async {
            self.node(id).await["online"] == true
        })
        .await;
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

    /// A node's commands (newest first) with their acknowledgement state.
    pub async fn commands(&self, node: &str) -> Vec<serde_json::Value> {
        let v = self
            .get(&format!("/api/v1/nodes/{node}/commands?limit=10000"))
            .await;
        v.as_array().cloned().unwrap_or_default()
    }

    /// Queue a `ping` for `node`; its command id.
    pub async fn ping(&self, node: &str) -> String {
        let cmd = self
            .post(
                &format!("/api/v1/nodes/{node}/commands"),
                serde_json::json!({ "kind": "ping" }),
            )
            .await;
        cmd["id"].as_str().expect("a command id").to_owned()
    }

    /// Whether command `id` of `node` was acknowledged as done.
    pub async fn acked_ok(&self, node: &str, id: &str) -> bool {
        self.commands(node)
            .await
            .iter()
            .any(|c| c["id"] == id && c["ok"] == true)
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
    edge_with(cloud, dir, node_id, |_| {}).await
}

/// An edge node enrolled with `cloud`, its configuration adjusted by `tweak`.
pub async fn edge_with(
    cloud: &Cloud,
    dir: &tempfile::TempDir,
    node_id: &str,
    tweak: impl FnOnce(&mut Config),
) -> TestNode {
    let mut c = edge_config(cloud, dir, node_id).await;
    tweak(&mut c);
    TestNode::start(c).await
}

/// The configuration of an edge node that enrols with `cloud` (once: the
/// identity it keeps in `dir` serves later starts).
pub async fn edge_config(cloud: &Cloud, dir: &tempfile::TempDir, node_id: &str) -> Config {
    let mut c = config(dir);
    c.cloud.enabled = true;
    c.cloud.controller_url = cloud.ctl.base_url.clone();
    c.cloud.ca_sha256 = cloud.ctl.ca_sha256.clone().unwrap_or_default();
    c.cloud.node_id = node_id.into();
    c.cloud.enroll_token = cloud.token(node_id).await;
    c.cloud.identity_path = dir.path().join("identity.json");
    c.cloud.heartbeat_secs = 1;
    c.cloud.ack_timeout_secs = 2;
    c
}

impl Cloud {
    /// Publish `bundle` as the operator's `model publish` does.
    pub async fn publish(&self, bundle: &std::path::Path) -> cloud_controller::store::ModelRow {
        let data = self._dir.path();
        let key = cloud_controller::models::signing_key(&data.join("model-signing.key")).unwrap();
        cloud_controller::models::publish(
            &self.ctl.store,
            &data.join("models"),
            &key,
            bundle,
            &ort_path(),
            cloud_controller::downlink::now_ms(),
        )
        .await
        .expect("the bundle publishes")
    }
}

/// A bundle `version` whose golden set adds a line the model gets right only
/// with modest confidence, and a node threshold override under which the
/// default bundle's golden set still passes but this one's does not: a model
/// that passes its checks at the controller and fails them on one node.
pub fn harder_bundle(dir: &std::path::Path, version: &str) -> (std::path::PathBuf, f32) {
    use sha2::Digest;
    edgedesk_nlu::runtime::init(&ort_path()).unwrap();
    let model = edgedesk_nlu::Model::load(&bundle_dir(), 1, 0.0).unwrap();
    let oos = model.manifest().out_of_scope_label.clone();
    let golden = std::fs::read_to_string(bundle_dir().join("golden.jsonl")).unwrap();
    let floor = golden
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["label"] != oos.as_str())
        .map(|v| {
            model
                .classify(v["text"].as_str().unwrap())
                .unwrap()
                .confidence
        })
        .fold(f32::MAX, f32::min);
    let base = model.threshold();
    let csv =
        std::fs::read_to_string(repo_root().join("data/intents/edgedesk_intents.csv")).unwrap();
    let (text, label) = csv
        .lines()
        .skip(1)
        .filter_map(|l| l.rsplit_once(','))
        .find_map(|(t, label)| {
            let p = model.classify(t).ok()?;
            (p.label == label
                && label != oos
                && p.confidence > base + 0.02
                && p.confidence < floor - 0.02)
                .then(|| (t.to_owned(), label.to_owned()))
        })
        .expect("a training line the model gets right with modest confidence");
    let out = bundle_version(dir, version);
    let mut g = golden.clone();
    g.push_str(&serde_json::json!({ "text": text, "label": label }).to_string());
    g.push('\n');
    std::fs::write(out.join("golden.jsonl"), &g).unwrap();
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    m["files"]["golden.jsonl"] = hex::encode(sha2::Sha256::digest(g.as_bytes())).into();
    std::fs::write(
        out.join("manifest.json"),
        serde_json::to_vec_pretty(&m).unwrap(),
    )
    .unwrap();
    (out, floor - 0.01)
}

/// A bundle `version` whose intents are renamed in a ring (each in-scope
/// label becomes the next one's name): it passes its own golden set, so it
/// publishes and loads, but it disagrees with the default model on nearly
/// every turn — the candidate shadow mode exists to refuse.
pub fn disagreeing_bundle(dir: &std::path::Path, version: &str) -> std::path::PathBuf {
    use sha2::Digest;
    let out = bundle_version(dir, version);
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    let oos = m["out_of_scope_label"].as_str().unwrap().to_owned();
    let labels: Vec<String> = serde_json::from_value(m["labels"].clone()).unwrap();
    let inscope: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] != oos).collect();
    let mut renamed = labels.clone();
    for (k, &i) in inscope.iter().enumerate() {
        renamed[i] = labels[inscope[(k + 1) % inscope.len()]].clone();
    }
    let map: std::collections::HashMap<&str, &str> = labels
        .iter()
        .zip(&renamed)
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let golden: String = std::fs::read_to_string(out.join("golden.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let label = map[v["label"].as_str().unwrap()].to_owned();
            v["label"] = label.into();
            format!("{v}\n")
        })
        .collect();
    std::fs::write(out.join("golden.jsonl"), &golden).unwrap();
    m["labels"] = serde_json::json!(renamed);
    m["files"]["golden.jsonl"] = hex::encode(sha2::Sha256::digest(golden.as_bytes())).into();
    std::fs::write(
        out.join("manifest.json"),
        serde_json::to_vec_pretty(&m).unwrap(),
    )
    .unwrap();
    out
}

/// A copy of the default bundle under `dir` with its manifest's version set
/// to `version` (the model itself unchanged).
pub fn bundle_version(dir: &std::path::Path, version: &str) -> std::path::PathBuf {
    let out = dir.join(format!("bundle-{version}"));
    std::fs::create_dir_all(&out).unwrap();
    for f in ["model.onnx", "golden.jsonl", "manifest.json"] {
        std::fs::copy(bundle_dir().join(f), out.join(f)).unwrap();
    }
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    m["version"] = serde_json::Value::String(version.into());
    // An empty file too: a bundle may carry one (nothing to fetch but the name).
    std::fs::write(out.join("empty.txt"), b"").unwrap();
    m["files"]["empty.txt"] =
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".into();
    std::fs::write(
        out.join("manifest.json"),
        serde_json::to_vec_pretty(&m).unwrap(),
    )
    .unwrap();
    out
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
        self.create_account(username, name, "agent", languages, capacity)
            .await;
    }

    /// Create a console account with `role` (agent, supervisor, admin).
    pub async fn create_account(
        &self,
        username: &str,
        name: &str,
        role: &str,
        languages: &[&str],
        capacity: u32,
    ) {
        let r = self
            .http
            .post(self.url("/api/v1/agents"))
            .bearer_auth(&self.ctl.admin_token)
            .json(&serde_json::json!({ "username": username, "display_name": name, "role": role,
                "password": "a long enough password", "languages": languages, "capacity": capacity }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }

    /// A console API GET as the holder of `cookie`, as JSON.
    pub async fn console_get(&self, cookie: &str, path: &str) -> serde_json::Value {
        let r = self
            .http
            .get(self.url(path))
            .header("cookie", cookie)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().await.unwrap()
    }

    /// A console API POST (with the session's CSRF token) as the holder of
    /// `cookie`: the status and the body as JSON (null if none).
    pub async fn console_post(
        &self,
        cookie: &str,
        path: &str,
        body: serde_json::Value,
    ) -> (u16, serde_json::Value) {
        self.console_call(reqwest::Method::POST, cookie, path, body)
            .await
    }

    /// A console API call with `method` (and the CSRF token), as
    /// [`Cloud::console_post`].
    pub async fn console_call(
        &self,
        method: reqwest::Method,
        cookie: &str,
        path: &str,
        body: serde_json::Value,
    ) -> (u16, serde_json::Value) {
        crate::process::console_call(&self.url(""), self.ca(), cookie, method, path, body).await
    }

    /// Log `username` in; the session cookie (`name=value`).
    pub async fn console_cookie(&self, username: &str) -> String {
        crate::process::console_login(&self.url(""), self.ca(), username).await
    }

    /// The console WebSocket of a logged-in agent, set online.
    pub async fn console(&self, username: &str) -> ConsoleWs {
        let cookie = self.console_cookie(username).await;
        crate::process::console_socket(&self.url(""), self.ca(), &cookie).await
    }

    /// The controller's CA, which clients of its HTTPS trust.
    pub fn ca(&self) -> &str {
        self.ctl
            .ca_pem
            .as_deref()
            .expect("the controller serves HTTPS")
    }
}
