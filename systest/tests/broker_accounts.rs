//! Node accounts on an external broker, made and removed by the controller:
//! Debian's Mosquitto with its dynamic security plugin, set up as
//! docs/OPERATIONS.md tells an operator (`mosquitto_ctrl dynsec init`, then
//! the controller's role), no anonymous logins. A node enrolled through the
//! controller connects with the account made for it; a revoked node's
//! account goes and the node is disconnected; a bad token touches nothing on
//! the broker; an enrolment while the broker is down says so and keeps the
//! token usable.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use edgedesk_systest::cloud::*;
use edgedesk_systest::*;

/// The operator's broker admin, made by `mosquitto_ctrl dynsec init`.
const ADMIN: &str = "broker-admin";
const ADMIN_PASSWORD: &str = "a broker admin password";
/// The controller's own broker client.
const CONTROLLER: &str = "edgedesk-controller";
const CONTROLLER_PASSWORD: &str = "the controller's broker password";

struct Broker {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn plugin() -> PathBuf {
    std::fs::read_dir("/usr/lib")
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path().join("mosquitto_dynamic_security.so"))
        .find(|p| p.exists())
        .expect("mosquitto_dynamic_security.so (Debian's mosquitto package)")
}

fn ctrl(port: u16, args: &[&str]) {
    let out = Command::new("mosquitto_ctrl")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-u",
            ADMIN,
            "-P",
            ADMIN_PASSWORD,
        ])
        .args(["dynsec"])
        .args(args)
        .output()
        .expect("mosquitto_ctrl (Debian's mosquitto package)");
    assert!(
        out.status.success(),
        "mosquitto_ctrl {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn spawn(dir: &Path, port: u16) -> Child {
    spawn_mosquitto_with(
        dir,
        &format!(
            // `user root`: started as root, mosquitto would switch to its
            // own user, which cannot save the plugin's file in this folder.
            "listener {port} 127.0.0.1\nallow_anonymous false\npersistence false\nuser root\n\
             plugin {}\nplugin_opt_config_file {}\n",
            plugin().display(),
            dir.join("dynsec.json").display()
        ),
    )
}

impl Broker {
    /// A broker set up as docs/OPERATIONS.md says.
    async fn start() -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let init = Command::new("mosquitto_ctrl")
            .args(["dynsec", "init"])
            .arg(dir.path().join("dynsec.json"))
            .args([ADMIN, ADMIN_PASSWORD])
            .output()
            .unwrap();
        assert!(init.status.success(), "{init:?}");
        let port = free_port();
        let child = spawn(dir.path(), port);
        wait_port(port).await;
        // The controller's client: dynsec admin (it manages node accounts)
        // and its own topics. (Not the operator's admin: changing a client's
        // roles disconnects it.)
        ctrl(port, &["createRole", "edgedesk-controller"]);
        for (acltype, topic) in [
            ("subscribePattern", "edgedesk/v1/nodes/+/up"),
            ("publishClientSend", "edgedesk/v1/nodes/+/down"),
        ] {
            ctrl(
                port,
                &["addRoleACL", "edgedesk-controller", acltype, topic, "allow"],
            );
        }
        ctrl(
            port,
            &["createClient", CONTROLLER, "-p", CONTROLLER_PASSWORD],
        );
        ctrl(port, &["addClientRole", CONTROLLER, "admin"]);
        ctrl(port, &["addClientRole", CONTROLLER, "edgedesk-controller"]);
        Broker { child, port, dir }
    }

    fn stop(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    async fn restart(&mut self) {
        self.child = spawn(self.dir.path(), self.port);
        wait_port(self.port).await;
    }

    /// The plugin's saved state: `(clients, roles)`. Mosquitto rewrites the
    /// file in place at every change, so a read may catch it half written:
    /// read until it parses.
    fn state(&self) -> (Vec<serde_json::Value>, Vec<serde_json::Value>) {
        let path = self.dir.path().join("dynsec.json");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            let text = std::fs::read_to_string(&path).unwrap();
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
                let list = |k: &str| v[k].as_array().cloned().unwrap_or_default();
                return (list("clients"), list("roles"));
            }
            // Polling the file until it is whole again.
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        panic!("{} never parsed", path.display());
    }

    fn has_client(&self, name: &str) -> bool {
        self.state().0.iter().any(|c| c["username"] == name)
    }

    fn has_role(&self, name: &str) -> bool {
        self.state().1.iter().any(|r| r["rolename"] == name)
    }
}

async fn cloud_on(broker: &Broker) -> Cloud {
    let port = broker.port;
    Cloud::start_with(|c| {
        c.mqtt.mode = cloud_controller::config::BrokerMode::External;
        c.mqtt.external_host = "127.0.0.1".into();
        c.mqtt.external_port = port;
        c.mqtt.external_username = CONTROLLER.into();
        c.mqtt.external_password = CONTROLLER_PASSWORD.into();
        c.mqtt.external_provisioning = cloud_controller::config::Provisioning::Dynsec;
    })
    .await
}

/// Whether `node` is enrolled and online (not yet enrolled: false).
async fn online(cloud: &Cloud, node: &str) -> Option<bool> {
    let r = cloud
        .http
        .get(cloud.url(&format!("/api/v1/nodes/{node}")))
        .bearer_auth(&cloud.ctl.admin_token)
        .send()
        .await
        .ok()?;
    let v: serde_json::Value = r.json().await.ok()?;
    v["online"].as_bool()
}

/// An enrolment request as a node sends it.
fn enrol_request(node: &str, token: &str) -> edgedesk_common::sync::EnrollRequest {
    let identity = edgedesk_common::envelope::Identity::from_secret(&[9; 64]);
    edgedesk_common::sync::EnrollRequest {
        token: token.into(),
        node_id: node.into(),
        keys: identity.public(),
        proof: identity.sign(&edgedesk_common::sync::enroll_proof_message(node, token)),
        sw_version: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_makes_and_removes_node_accounts_on_mosquitto() {
    let broker = Broker::start().await;
    let cloud = cloud_on(&broker).await;
    let edir = tempfile::tempdir().unwrap();
    let node = edge(&cloud, &edir, "branch-d").await;
    eventually(
        15,
        "the node online through its own broker account",
        || async { online(&cloud, "branch-d").await == Some(true) },
    )
    .await;
    let (clients, roles) = broker.state();
    let client = clients
        .iter()
        .find(|c| c["username"] == "branch-d")
        .unwrap_or_else(|| panic!("no client branch-d: {clients:#?}"));
    assert_eq!(client["clientid"], "branch-d");
    assert_eq!(client["roles"][0]["rolename"], "edgedesk-node-branch-d");
    let role = roles
        .iter()
        .find(|r| r["rolename"] == "edgedesk-node-branch-d")
        .unwrap();
    let topics: Vec<&str> = role["acls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["topic"].as_str().unwrap())
        .collect();
    assert!(
        topics
            .iter()
            .all(|t| *t == "edgedesk/v1/nodes/branch-d/up"
                || *t == "edgedesk/v1/nodes/branch-d/down"),
        "only its own topics: {topics:?}"
    );
    // Both directions work through the account: a command down, its ack up.
    let cmd = cloud
        .post(
            "/api/v1/nodes/branch-d/commands",
            serde_json::json!({ "kind": "ping" }),
        )
        .await;
    let id = cmd["id"].as_str().unwrap().to_owned();
    eventually(15, "the ping acknowledged", || async {
        let list = cloud.get("/api/v1/nodes/branch-d/commands").await;
        list.as_array()
            .unwrap()
            .iter()
            .any(|c| c["id"] == id.as_str() && c["ok"] == true)
    })
    .await;

    // A bad token is refused and nothing is made on the broker.
    let r = cloud
        .http
        .post(cloud.url("/api/v1/enroll"))
        .json(&enrol_request("branch-x", "not-a-token"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(!broker.has_client("branch-x") && !broker.has_role("edgedesk-node-branch-x"));

    // Revocation removes the account and disconnects the node.
    cloud
        .post("/api/v1/nodes/branch-d/revoke", serde_json::json!({}))
        .await;
    eventually(15, "the account and its role gone", || async {
        !broker.has_client("branch-d") && !broker.has_role("edgedesk-node-branch-d")
    })
    .await;
    eventually(15, "the revoked node offline", || async {
        online(&cloud, "branch-d").await == Some(false)
    })
    .await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enrolment_while_the_broker_is_down_says_so_and_keeps_the_token() {
    let mut broker = Broker::start().await;
    let cloud = cloud_on(&broker).await;
    let token = cloud.token("branch-e").await;
    broker.stop();
    let enrol = || {
        cloud
            .http
            .post(cloud.url("/api/v1/enroll"))
            .json(&enrol_request("branch-e", &token))
            .send()
    };
    let r = enrol().await.unwrap();
    assert_eq!(r.status(), 503);
    let body = r.text().await.unwrap();
    assert!(
        body.contains("did not answer") && body.contains("try again"),
        "{body}"
    );
    broker.restart().await;
    // Once the controller is back on the broker the same token works.
    eventually(30, "enrolment with the same token", || async {
        enrol().await.unwrap().status() == 200
    })
    .await;
    eventually(15, "the account on the broker", || async {
        broker.has_client("branch-e")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_made_while_the_broker_was_down_is_carried_out_after_a_restart() {
    let mut broker = Broker::start().await;
    let q = |s: &str| format!("{s:?}");
    let env = [
        ("EDGEDESK_CC_MQTT__MODE", q("external")),
        ("EDGEDESK_CC_MQTT__EXTERNAL_HOST", q("127.0.0.1")),
        ("EDGEDESK_CC_MQTT__EXTERNAL_PORT", broker.port.to_string()),
        ("EDGEDESK_CC_MQTT__EXTERNAL_USERNAME", q(CONTROLLER)),
        (
            "EDGEDESK_CC_MQTT__EXTERNAL_PASSWORD",
            q(CONTROLLER_PASSWORD),
        ),
        ("EDGEDESK_CC_MQTT__EXTERNAL_PROVISIONING", q("dynsec")),
    ];
    let cdir = tempfile::tempdir().unwrap();
    let mut ctl = edgedesk_systest::process::CtlProcess::start(
        Path::new(env!("CARGO_BIN_EXE_systest-cloud-controller")),
        cdir.path(),
        free_port(),
        free_port(),
        &env,
    )
    .await;
    let edir = tempfile::tempdir().unwrap();
    let node = TestNode::start(ctl.node_config(&edir, "branch-r").await).await;
    eventually(15, "the node online", || ctl.node_online("branch-r")).await;
    assert!(broker.has_client("branch-r"));
    // Revoked while the broker is down; the controller is killed before the
    // broker comes back, so the deletion it was waiting to send is gone.
    broker.stop();
    ctl.api(
        reqwest::Method::POST,
        "/api/v1/nodes/branch-r/revoke",
        Some(serde_json::json!({})),
    )
    .await
    .expect("revoked");
    ctl.kill();
    broker.restart().await;
    assert!(
        broker.has_client("branch-r"),
        "so far the account outlived the revocation"
    );
    ctl.restart().await;
    eventually(
        20,
        "the revoked node's account deleted after the restart",
        || async { !broker.has_client("branch-r") && !broker.has_role("edgedesk-node-branch-r") },
    )
    .await;
    node.stop().await;
}
