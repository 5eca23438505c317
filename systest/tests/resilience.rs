//! No loss across failures, with real processes: the controller killed with
//! -9 and restarted under load; an edge node killed with -9 while it holds
//! unsent events; Mosquitto (Debian's package) killed and restarted under
//! load, which also runs the whole sync through a third-party broker;
//! PostgreSQL (Debian's package) stopped and started under the controller;
//! the active one of two controllers on one database killed with -9.
//! After each, every event is in the controller's store exactly once.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use edgedesk_systest::process::{CtlProcess, console_login, console_next, console_socket};
use edgedesk_systest::*;

/// The real `cloud-controller` command line (built under its systest name).
fn controller_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_systest-cloud-controller"))
}

async fn start_controller(
    dir: &Path,
    http: u16,
    mqtt: u16,
    extra: &[(&str, String)],
) -> CtlProcess {
    CtlProcess::start(controller_bin(), dir, http, mqtt, extra).await
}

/// The node's escalation events the controller stored (visitors who left
/// also produce presence events after a grace; not counted here).
async fn event_ids(ctl: &CtlProcess, node: &str) -> Option<Vec<String>> {
    let v = ctl
        .api(
            reqwest::Method::GET,
            &format!("/api/v1/events?node={node}&kind=escalation&limit=100000"),
            None,
        )
        .await?;
    Some(
        v.as_array()?
            .iter()
            .map(|e| e["id"].as_str().unwrap_or_default().to_owned())
            .collect(),
    )
}

fn edge_config(
    dir: &tempfile::TempDir,
    node: &str,
    ctl: &CtlProcess,
    token: String,
) -> edge_node::config::Config {
    let mut c = config(dir);
    c.cloud.enabled = true;
    c.cloud.controller_url = ctl.base();
    c.cloud.ca_sha256 = edgedesk_support::tls::ca_sha256(&ctl.ca_pem).unwrap();
    c.cloud.node_id = node.into();
    c.cloud.enroll_token = token;
    c.cloud.identity_path = dir.path().join("identity.json");
    c.cloud.heartbeat_secs = 1;
    c.cloud.ack_timeout_secs = 2;
    c
}

async fn escalate_at(addr: std::net::SocketAddr, i: usize) {
    let mut ws = connect_url(&format!("ws://{addr}/ws"), None).await;
    start_session(&mut ws).await;
    say(
        &mut ws,
        &msg(&format!("I want to talk to a human please ({i})")),
    )
    .await;
}

/// `total` escalations at `addr`, one every `every_ms` whatever the replies
/// (open loop), as a task.
fn escalations(
    addr: std::net::SocketAddr,
    total: usize,
    every_ms: u64,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for i in 0..total {
            escalate_at(addr, i).await;
            tokio::time::sleep(Duration::from_millis(every_ms)).await;
        }
    })
}

fn assert_exactly_once(ids: &[String], expected: usize) {
    let set: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(set.len(), ids.len(), "duplicates in the controller's store");
    assert_eq!(ids.len(), expected, "every event stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_killed_with_sigkill_under_load_loses_nothing() {
    let cdir = tempfile::tempdir().unwrap();
    let (http, mqtt) = (free_port(), free_port());
    let mut ctl = start_controller(cdir.path(), http, mqtt, &[]).await;
    let edir = tempfile::tempdir().unwrap();
    let node = TestNode::start(edge_config(
        &edir,
        "branch-k",
        &ctl,
        ctl.token_for("branch-k").await,
    ))
    .await;
    let addr = node.addr;
    let total = 60;
    let load = escalations(addr, total, 50);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    ctl.kill();
    tokio::time::sleep(Duration::from_millis(800)).await;
    ctl.restart().await;
    load.await.unwrap();
    eventually(40, "all events stored after the restart", || async {
        event_ids(&ctl, "branch-k")
            .await
            .is_some_and(|ids| ids.len() >= total)
            && node.store().outbox_depth().await.unwrap() == 0
    })
    .await;
    assert_exactly_once(&event_ids(&ctl, "branch-k").await.unwrap(), total);
    node.stop().await;
    ctl.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_under_load_loses_nothing() {
    let pg = PgCluster::start();
    let cdir = tempfile::tempdir().unwrap();
    let (http, mqtt) = (free_port(), free_port());
    let mut ctl = start_controller(
        cdir.path(),
        http,
        mqtt,
        &[("EDGEDESK_CC_STORE__POSTGRES_URL", format!("{:?}", pg.url))],
    )
    .await;
    assert_eq!(ready_text(&ctl).await.0, 200);
    let edir = tempfile::tempdir().unwrap();
    let node = TestNode::start(edge_config(
        &edir,
        "branch-p",
        &ctl,
        ctl.token_for("branch-p").await,
    ))
    .await;
    let addr = node.addr;
    let total = 60;
    let load = escalations(addr, total, 50);
    eventually(20, "some events stored", || async {
        event_ids(&ctl, "branch-p")
            .await
            .is_some_and(|ids| ids.len() >= 5)
    })
    .await;
    pg.stop();
    // The controller stays up and says why it is not ready; the node keeps
    // what was not acknowledged.
    eventually(10, "/readyz says the store is unavailable", || async {
        ready_text(&ctl).await.0 == 503
    })
    .await;
    eventually(20, "the node holds unacknowledged events", || async {
        node.store().outbox_depth().await.unwrap() > 0
    })
    .await;
    pg.restart();
    load.await.unwrap();
    eventually(10, "/readyz is ready again", || async {
        ready_text(&ctl).await.0 == 200
    })
    .await;
    eventually(
        40,
        "all events stored after PostgreSQL's restart",
        || async {
            event_ids(&ctl, "branch-p")
                .await
                .is_some_and(|ids| ids.len() >= total)
                && node.store().outbox_depth().await.unwrap() == 0
        },
    )
    .await;
    assert_exactly_once(&event_ids(&ctl, "branch-p").await.unwrap(), total);
    node.stop().await;
    ctl.kill();
}

/// What `/readyz` says, with its status.
async fn ready_text(ctl: &CtlProcess) -> (u16, String) {
    match controller_http(&ctl.ca_pem)
        .get(format!("{}/readyz", ctl.base()))
        .send()
        .await
    {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

/// Two controllers on one PostgreSQL database, one data folder and one
/// Mosquitto: one is active, the other stands by (alive, not ready, naming
/// the active one). The active one is killed with -9 under load: the
/// standby takes over, and every event is stored exactly once.
/// Two controller processes on one PostgreSQL database, one data folder
/// and one Mosquitto, started in turn: the first is active, the second
/// stands by (alive, not ready, naming the active one, serving no API).
struct Replicas {
    a: CtlProcess,
    b: CtlProcess,
    /// More standbys (see [`Replicas::start_with`]).
    more: Vec<CtlProcess>,
    dir: tempfile::TempDir,
    pg: PgCluster,
    mosq: Child,
    _mdir: tempfile::TempDir,
}

impl Replicas {
    /// `together`: both processes started at the same moment.
    async fn start(together: bool) -> Replicas {
        Replicas::start_with(together, 0, &[]).await
    }

    /// As [`Replicas::start`], with `more` standbys started after the two
    /// and settings `extra` for all of them.
    async fn start_with(together: bool, more: usize, extra: &[(&str, String)]) -> Replicas {
        let pg = PgCluster::start();
        let mdir = tempfile::tempdir().unwrap();
        let mport = free_port();
        let mosq = spawn_mosquitto(mdir.path(), mport);
        wait_port(mport).await;
        let dir = tempfile::tempdir().unwrap();
        let shared = [
            ("EDGEDESK_CC_STORE__POSTGRES_URL", format!("{:?}", pg.url)),
            ("EDGEDESK_CC_MQTT__MODE", "\"external\"".to_owned()),
            ("EDGEDESK_CC_MQTT__EXTERNAL_PORT", mport.to_string()),
            // One model service address for whichever replica is active.
            (
                "EDGEDESK_CC_MODELS__QUIC_LISTEN",
                format!("\"127.0.0.1:{}\"", free_port()),
            ),
            ("EDGEDESK_CC_MODELS__TICK_MS", "100".to_owned()),
        ];
        let shared: Vec<(&str, String)> = shared.into_iter().chain(extra.iter().cloned()).collect();
        let shared = shared.as_slice();
        let (a, b) = if together {
            // Both at once on the empty folder: whichever got the lock is `a`.
            let (x, y) = tokio::join!(
                start_controller(dir.path(), free_port(), free_port(), shared),
                start_controller(dir.path(), free_port(), free_port(), shared)
            );
            eventually(20, "one of the two is active", || async {
                ready_text(&x).await.0 == 200 || ready_text(&y).await.0 == 200
            })
            .await;
            if ready_text(&x).await.0 == 200 {
                (x, y)
            } else {
                (y, x)
            }
        } else {
            let a = start_controller(dir.path(), free_port(), free_port(), shared).await;
            assert_eq!(ready_text(&a).await.0, 200, "the first replica is active");
            let b = start_controller(dir.path(), free_port(), free_port(), shared).await;
            (a, b)
        };
        let mut standbys = vec![b];
        for _ in 0..more {
            standbys.push(start_controller(dir.path(), free_port(), free_port(), shared).await);
        }
        for b in &standbys {
            let (status, said) = ready_text(b).await;
            assert_eq!(status, 503, "{said}");
            assert!(said.contains("standby: the active controller is"), "{said}");
            assert!(
                b.api(reqwest::Method::GET, "/api/v1/nodes", None)
                    .await
                    .is_some(),
                "a standby forwards the API to the active one"
            );
        }
        let b = standbys.remove(0);
        Replicas {
            a,
            b,
            more: standbys,
            dir,
            pg,
            mosq,
            _mdir: mdir,
        }
    }

    /// Kill the active replica with -9; wait until a standby is ready,
    /// which is `b` from then on.
    async fn fail_over(&mut self) {
        self.a.kill();
        eventually(20, "a standby becomes active", || async {
            ready_text(&self.b).await.0 == 200 || self.active_among_more().await.is_some()
        })
        .await;
        if ready_text(&self.b).await.0 != 200 {
            let i = self.active_among_more().await.expect("a standby is active");
            std::mem::swap(&mut self.b, &mut self.more[i]);
        }
    }

    async fn active_among_more(&self) -> Option<usize> {
        for (i, c) in self.more.iter().enumerate() {
            if ready_text(c).await.0 == 200 {
                return Some(i);
            }
        }
        None
    }

    fn stop(mut self) {
        self.b.kill();
        for c in &mut self.more {
            c.kill();
        }
        self.mosq.kill().unwrap();
        self.mosq.wait().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_when_the_active_controller_is_killed() {
    let mut r = Replicas::start(false).await;
    let a = &r.a;
    let edir = tempfile::tempdir().unwrap();
    let node = TestNode::start(edge_config(
        &edir,
        "branch-r",
        a,
        a.token_for("branch-r").await,
    ))
    .await;
    eventually(15, "online through mosquitto", || a.node_online("branch-r")).await;
    let addr = node.addr;
    let total = 60;
    let load = escalations(addr, total, 50);
    eventually(20, "some events stored", || async {
        event_ids(a, "branch-r")
            .await
            .is_some_and(|ids| ids.len() >= 5)
    })
    .await;
    r.fail_over().await;
    let b = &r.b;
    load.await.unwrap();
    eventually(
        40,
        "all events stored by the new active replica",
        || async {
            event_ids(b, "branch-r")
                .await
                .is_some_and(|ids| ids.len() >= total)
                && node.store().outbox_depth().await.unwrap() == 0
        },
    )
    .await;
    assert_exactly_once(&event_ids(b, "branch-r").await.unwrap(), total);
    // Commands go down from the new replica (a new block of sequence
    // numbers, above the old one's): a ping is acknowledged.
    assert!(ping_acked(b, "branch-r", 20).await);
    node.stop().await;
    r.stop();
}

/// A counter of a standby's `/metrics` (0 when absent or unreadable).
async fn standby_counter(ctl: &CtlProcess, name: &str) -> u64 {
    let Ok(r) = controller_http(&ctl.ca_pem)
        .get(format!("{}/metrics", ctl.base()))
        .bearer_auth(&ctl.token)
        .send()
        .await
    else {
        return 0;
    };
    let text = r.text().await.unwrap_or_default();
    // `name` or `name{label="value"` (the closing brace is added here).
    let metric = match name.split_once('{') {
        Some((n, labels)) => format!("edgedesk_controller_{n}_total{{{labels}}} "),
        None => format!("edgedesk_controller_{name}_total "),
    };
    text.lines()
        .find_map(|l| l.strip_prefix(&metric))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Active/active ingestion (`mqtt.shared_group`): three controllers on one
/// PostgreSQL and one Mosquitto. The broker spreads the nodes' traffic over
/// all three; the standbys store their share and relay acknowledgements,
/// presence and escalations to the active one: escalations reach the agent
/// whichever replica stored them. The active one is killed with -9: a
/// standby takes over and its commands are acknowledged. Then the last
/// standby is killed with -9 under load: every event is stored exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_node_traffic_and_losing_any_loses_nothing() {
    let group = [("EDGEDESK_CC_MQTT__SHARED_GROUP", "\"edgedesk\"".to_owned())];
    let mut r = Replicas::start_with(false, 1, &group).await;
    let ids = ["branch-s1", "branch-s2"];
    let mut nodes = Vec::new();
    for id in ids {
        let dir = tempfile::tempdir().unwrap();
        let node = TestNode::start(edge_config(&dir, id, &r.a, r.a.token_for(id).await)).await;
        nodes.push((node, dir));
    }
    for id in ids {
        eventually(20, "online: presence relayed by standbys too", || {
            r.a.node_online(id)
        })
        .await;
    }
    for standby in [&r.b, &r.more[0]] {
        eventually(20, "each standby takes a share and relays", || async {
            standby_counter(standby, "heartbeats").await > 0
                && standby_counter(standby, "relay_sent").await > 0
        })
        .await;
    }
    // Escalations reach the agent whichever replica stored them: six
    // visitors who stay, six chats on the agent's console.
    r.a.create_agent("ana", "agent", 6).await;
    let cookie = console_login(&r.a.base(), &r.a.ca_pem, "ana").await;
    let mut console = console_socket(&r.a.base(), &r.a.ca_pem, &cookie).await;
    let mut visitors = Vec::new();
    for i in 0..6 {
        let mut ws = connect_url(&format!("ws://{}/ws", nodes[i % 2].0.addr), None).await;
        start_session(&mut ws).await;
        say(&mut ws, &msg("I want to talk to a human please")).await;
        visitors.push(ws);
    }
    let mut chats = std::collections::HashSet::new();
    for _ in 0..6 {
        let assigned = console_next(&mut console, "assigned").await;
        chats.insert(
            assigned["chat"]["id"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    assert_eq!(chats.len(), 6, "six different chats assigned: {chats:?}");
    // The active one killed: a standby takes over, its commands are
    // acknowledged, and the other standby now relays to it.
    r.fail_over().await;
    assert!(ping_acked(&r.b, ids[1], 20).await, "after the fail-over");
    drop(visitors);
    // Under load, the last standby killed with -9 once it has stored a share.
    let total = 40;
    let loads: Vec<_> = nodes
        .iter()
        .map(|(n, _)| escalations(n.addr, total, 50))
        .collect();
    let c = &r.more[0];
    eventually(20, "the standby stores a share of the load", || async {
        standby_counter(c, "events_new").await > 0
    })
    .await;
    r.more[0].kill();
    for l in loads {
        l.await.unwrap();
    }
    // Each node: the load's escalations and three of the six visitors'.
    let expected = total + 3;
    for (i, id) in ids.iter().enumerate() {
        let node = &nodes[i].0;
        eventually(40, "all events stored, outboxes empty", || async {
            event_ids(&r.b, id)
                .await
                .is_some_and(|e| e.len() >= expected)
                && node.store().outbox_depth().await.unwrap() == 0
        })
        .await;
        assert_exactly_once(&event_ids(&r.b, id).await.unwrap(), expected);
    }
    for (node, _) in nodes {
        node.stop().await;
    }
    r.stop();
}

/// Any replica serves REST and the console (a standby forwards to the
/// active controller): with three replicas, an operator makes a join token
/// and a node enrols through one standby; an agent created, logged in and
/// working at the other (console page, REST, the WebSocket) gets a
/// visitor's chat and answers it. The active one is killed with -9; the
/// agent's console, reconnected at the standby that is left, gets the chat
/// back from whichever replica won, and the conversation goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_replica_serves_rest_and_the_console() {
    let mut r = Replicas::start_with(false, 1, &[]).await;
    // Enrolment and REST through a standby.
    let dir = tempfile::tempdir().unwrap();
    let (b, c) = (&r.b, &r.more[0]);
    let node = TestNode::start(edge_config(
        &dir,
        "branch-f",
        c,
        c.token_for("branch-f").await,
    ))
    .await;
    eventually(20, "online, asked at a standby", || {
        c.node_online("branch-f")
    })
    .await;
    // The console at the other standby: page, account, login, socket.
    let page = controller_http(&b.ca_pem)
        .get(format!("{}/console", b.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.text().await.unwrap().contains("<html"),
        "the console page"
    );
    b.create_agent("fay", "agent", 2).await;
    let cookie = console_login(&b.base(), &b.ca_pem, "fay").await;
    let mut console = console_socket(&b.base(), &b.ca_pem, &cookie).await;
    let mut visitor = node.connect().await;
    let (_, chat) = escalate(&mut visitor).await;
    let assigned = console_next(&mut console, "assigned").await;
    assert_eq!(assigned["chat"]["id"], chat.as_str());
    agent_answers(&mut console, &chat, "Hello, this is Fay", "f-1").await;
    agent_said(&mut visitor, "Hello, this is Fay").await;
    assert!(standby_counter(b, "forwarded{kind=\"websocket\"").await >= 1);
    assert!(standby_counter(b, "forwarded{kind=\"http\"").await >= 2);
    assert!(standby_counter(c, "forwarded{kind=\"http\"").await >= 2);
    // Bad input: a request that already went through a replica is not
    // passed on again (no loop between standbys) and says why.
    let looped = controller_http(&b.ca_pem)
        .get(format!("{}/api/v1/nodes", b.base()))
        .bearer_auth(&b.token)
        .header("x-edgedesk-forwarded", "anything")
        .send()
        .await
        .unwrap();
    assert_eq!(looped.status(), 503);
    assert!(looped.headers().contains_key("retry-after"));
    let why = looped.text().await.unwrap();
    assert!(why.contains("another replica forwarded"), "{why}");

    // The active one killed: the console comes back through the standby
    // left, with the chat, and the agent goes on.
    r.fail_over().await;
    let left = &r.more[0];
    eventually(
        20,
        "the standby left forwards to the new active one",
        || async {
            left.api(reqwest::Method::GET, "/api/v1/nodes", None)
                .await
                .is_some()
        },
    )
    .await;
    let mut console = console_socket(&left.base(), &left.ca_pem, &cookie).await;
    let back = console_next(&mut console, "assigned").await;
    assert_eq!(back["chat"]["id"], chat.as_str(), "the chat comes back");
    agent_answers(&mut console, &chat, "Still here", "f-2").await;
    agent_said(&mut visitor, "Still here").await;
    node.stop().await;
    r.stop();
}

/// The agent writes `text` in `chat`; the console acknowledges it.
async fn agent_answers(console: &mut ConsoleWs, chat: &str, text: &str, id: &str) {
    edgedesk_systest::process::console_send(
        console,
        serde_json::json!({ "type": "message", "chat": chat, "text": text, "client_id": id }),
    )
    .await;
    assert_eq!(console_next(console, "ack").await["client_id"], id);
}

/// Wait until the visitor sees the agent say `text` (other frames skipped;
/// `recv` fails the test when nothing comes).
async fn agent_said(ws: &mut Ws, text: &str) {
    use edgedesk_common::chat::{Sender, ServerFrame};
    loop {
        if let ServerFrame::Reply {
            from: Sender::Agent,
            text: t,
            ..
        } = recv(ws).await
        {
            if t == text {
                return;
            }
        }
    }
}

/// Two replicas started at the same moment on an empty data folder make one
/// identity between them (keys, CA): a node enrolled with the active one
/// talks to the other after a fail-over (its ping is acknowledged).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_started_together_share_one_identity() {
    let mut r = Replicas::start(true).await;
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(edge_config(
        &dir,
        "branch-t",
        &r.a,
        r.a.token_for("branch-t").await,
    ))
    .await;
    eventually(15, "online", || r.a.node_online("branch-t")).await;
    assert!(ping_acked(&r.a, "branch-t", 20).await);
    r.fail_over().await;
    // The standby's page and the new active controller pin the same CA.
    assert_eq!(r.a.ca_pem, r.b.ca_pem);
    assert!(
        ping_acked(&r.b, "branch-t", 20).await,
        "after the fail-over"
    );
    node.stop().await;
    r.stop();
}

/// The active replica killed in the middle of a rollout (after its first
/// wave, while it bakes): the standby carries the rollout on from the
/// database, and every node ends on the new model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_goes_on_when_the_active_controller_is_killed() {
    let mut r = Replicas::start(false).await;
    let mut nodes = Vec::new();
    for id in ["branch-1", "branch-2"] {
        let dir = tempfile::tempdir().unwrap();
        let node = TestNode::start(edge_config(&dir, id, &r.a, r.a.token_for(id).await)).await;
        nodes.push((node, dir));
    }
    for id in ["branch-1", "branch-2"] {
        eventually(15, "nodes online", || r.a.node_online(id)).await;
    }
    let work = tempfile::tempdir().unwrap();
    publish_with_cli(
        controller_bin(),
        r.dir.path(),
        &edgedesk_systest::cloud::bundle_version(work.path(), "1.1.0"),
        &[("EDGEDESK_CC_STORE__POSTGRES_URL", format!("{:?}", r.pg.url))],
    );
    let created =
        r.a.api(
            reqwest::Method::POST,
            "/api/v1/rollouts",
            Some(
                serde_json::json!({ "model": "1.1.0", "waves": ["1", "100%"],
                "bake_secs": 4, "failure_threshold": "0" }),
            ),
        )
        .await
        .expect("the rollout starts");
    let id = created["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/rollouts/{id}");
    eventually(30, "the first wave done, baking", || async {
        r.a.api(reqwest::Method::GET, &path, None)
            .await
            .is_some_and(|v| v["phase"] == "baking" && v["updated"] == 1)
    })
    .await;
    r.fail_over().await;
    eventually(
        30,
        "the new active replica finishes the rollout",
        || async {
            r.b.api(reqwest::Method::GET, &path, None)
                .await
                .is_some_and(|v| v["phase"] == "succeeded" && v["updated"] == 2)
        },
    )
    .await;
    for (node, _) in &nodes {
        assert_eq!(node.model_version(), "1.1.0");
    }
    for (node, _) in nodes {
        node.stop().await;
    }
    r.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_killed_with_sigkill_holding_unsent_events_loses_nothing() {
    let cdir = tempfile::tempdir().unwrap();
    let (http, mqtt) = (free_port(), free_port());
    let proxy = edgedesk_systest::proxy::FaultProxy::start(format!("127.0.0.1:{mqtt}")).await;
    let mut ctl = start_controller(
        cdir.path(),
        http,
        mqtt,
        &[("EDGEDESK_CC_MQTT__ADVERTISE_PORT", proxy.port.to_string())],
    )
    .await;
    let edir = tempfile::tempdir().unwrap();
    let cfg = edge_config(&edir, "branch-e", &ctl, ctl.token_for("branch-e").await);
    let port = free_port();
    let spawn_edge = |cfg: &edge_node::config::Config| {
        edge_process(
            Path::new(env!("CARGO_BIN_EXE_systest-edge-node")),
            cfg,
            port,
        )
        .env("EDGEDESK_CLOUD__ACK_TIMEOUT_SECS", "2")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
    };
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let wait_ready = || wait_edge_ready(addr);
    let mut edge = spawn_edge(&cfg);
    wait_ready().await;
    eventually(15, "edge online", || ctl.node_online("branch-e")).await;
    proxy.cut();
    let total = 25;
    for i in 0..total {
        escalate_at(addr, i).await;
    }
    edge.kill().unwrap(); // SIGKILL with 25 unsent events in its outbox
    edge.wait().unwrap();
    assert_eq!(
        event_ids(&ctl, "branch-e").await.unwrap().len(),
        0,
        "nothing got through the cut link"
    );
    proxy.restore();
    let mut edge = spawn_edge(&cfg);
    wait_ready().await;
    eventually(40, "backlog delivered after restart", || async {
        event_ids(&ctl, "branch-e")
            .await
            .is_some_and(|ids| ids.len() >= total)
    })
    .await;
    assert_exactly_once(&event_ids(&ctl, "branch-e").await.unwrap(), total);
    edge.kill().unwrap();
    edge.wait().unwrap();
    ctl.kill();
}

fn spawn_mosquitto(dir: &Path, port: u16) -> Child {
    spawn_mosquitto_with(
        dir,
        &format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_mosquitto_and_mosquitto_killed_under_load() {
    let mdir = tempfile::tempdir().unwrap();
    let mport = free_port();
    let mut mosq = spawn_mosquitto(mdir.path(), mport);
    wait_port(mport).await;
    let cdir = tempfile::tempdir().unwrap();
    let http = free_port();
    let ext = [
        ("EDGEDESK_CC_MQTT__MODE", "external".to_owned()),
        ("EDGEDESK_CC_MQTT__EXTERNAL_PORT", mport.to_string()),
    ];
    let mut ctl = start_controller(cdir.path(), http, free_port(), &ext).await;
    let edir = tempfile::tempdir().unwrap();
    let node = TestNode::start(edge_config(
        &edir,
        "branch-m",
        &ctl,
        ctl.token_for("branch-m").await,
    ))
    .await;
    eventually(15, "online through mosquitto", || {
        ctl.node_online("branch-m")
    })
    .await;
    let addr = node.addr;
    let total = 50;
    let load = escalations(addr, total, 40);
    tokio::time::sleep(Duration::from_millis(800)).await;
    mosq.kill().unwrap();
    mosq.wait().unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut mosq = spawn_mosquitto(mdir.path(), mport);
    load.await.unwrap();
    eventually(40, "all events stored after the broker restart", || async {
        event_ids(&ctl, "branch-m")
            .await
            .is_some_and(|ids| ids.len() >= total)
            && node.store().outbox_depth().await.unwrap() == 0
    })
    .await;
    assert_exactly_once(&event_ids(&ctl, "branch-m").await.unwrap(), total);
    node.stop().await;
    ctl.kill();
    mosq.kill().unwrap();
    mosq.wait().unwrap();
}

/// A ping to `node` through the real controller; whether it is acknowledged
/// within `secs`.
async fn ping_acked(ctl: &CtlProcess, node: &str, secs: u64) -> bool {
    let Some(cmd) = ctl
        .api(
            reqwest::Method::POST,
            &format!("/api/v1/nodes/{node}/commands"),
            Some(serde_json::json!({ "kind": "ping" })),
        )
        .await
    else {
        return false;
    };
    let id = cmd["id"].as_str().unwrap().to_owned();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        let cmds = ctl
            .api(
                reqwest::Method::GET,
                &format!("/api/v1/nodes/{node}/commands"),
                None,
            )
            .await;
        if cmds.is_some_and(|v| {
            v.as_array()
                .unwrap()
                .iter()
                .any(|c| c["id"] == id.as_str() && c["ok"] == true)
        }) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Issue 11, finding 11: the controller's sequence numbers come from a
/// counter kept in its store, not the clock, so restarts never make a node
/// refuse the downlink; and when the database goes back (restored from a
/// backup), the node refuses as it must and `cloud-controller sync
/// raise-seq` is the documented way back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequence_numbers_survive_restarts_and_a_restored_store_is_recovered() {
    let cdir = tempfile::tempdir().unwrap();
    let (http, mqtt) = (free_port(), free_port());
    let mut ctl = start_controller(cdir.path(), http, mqtt, &[]).await;
    let edir = tempfile::tempdir().unwrap();
    let node = TestNode::start(edge_config(
        &edir,
        "branch-s",
        &ctl,
        ctl.token_for("branch-s").await,
    ))
    .await;
    eventually(20, "the node is online", || ctl.node_online("branch-s")).await;
    assert!(ping_acked(&ctl, "branch-s", 20).await);
    for _ in 0..2 {
        ctl.kill();
        ctl.restart().await;
        assert!(ping_acked(&ctl, "branch-s", 20).await, "after a restart");
    }
    // A restore from a backup taken three starts ago.
    ctl.kill();
    let url = cloud_controller::store::test_postgres_for(cdir.path());
    let path = cdir.path().join("controller.db");
    // On a thread of its own: the synchronous PostgreSQL client runs its own runtime.
    std::thread::scope(|s| {
        s.spawn(|| {
            use cloud_controller::store::Conn;
            let db = if url.is_empty() {
                Conn::sqlite(rusqlite::Connection::open(&path).unwrap())
            } else {
                Conn::postgres(&url).unwrap()
            };
            let top: String = db
                .query_row(
                    "SELECT value FROM settings WHERE key = 'seq_reserved'",
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            let back = top.parse::<u64>().unwrap() - 3 * edgedesk_common::envelope::SEQ_BLOCK;
            db.execute(
                "UPDATE settings SET value = ?1 WHERE key = 'seq_reserved'",
                [back.to_string()],
            )
            .unwrap();
        })
        .join()
        .unwrap()
    });
    let replays = || async {
        let (_, text) = node.get("/metrics").await;
        text.lines()
            .find(|l| l.starts_with("edgedesk_uplink_refused_total{reason=\"replay\"}"))
            .and_then(|l| l.split_whitespace().last()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let before = replays().await;
    ctl.restart().await;
    assert!(
        !ping_acked(&ctl, "branch-s", 5).await,
        "numbers at or below what the node saw are refused"
    );
    assert!(replays().await > before, "the node says why");
    // The recovery, on the controller's host with the controller stopped.
    ctl.kill();
    let out = std::process::Command::new(controller_bin())
        .args(["sync", "raise-seq"])
        .envs(store_env(cdir.path()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("raised by 16 blocks"));
    ctl.restart().await;
    assert!(ping_acked(&ctl, "branch-s", 20).await, "after raise-seq");
    node.stop().await;
    ctl.kill();
}
