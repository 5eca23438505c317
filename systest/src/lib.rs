//! System tests of EdgeDesk: the edge node and the controller as black boxes,
//! together. This library is the harness the tests in `tests/` share:
//!
//! - the crate root: start a real node (real ONNX Runtime, real SQLite) on
//!   127.0.0.1:0 and talk to it through a real WebSocket client;
//! - [`cloud`]: a controller in the test process and nodes enrolled with it;
//! - [`proxy`]: TCP and UDP fault proxies that cut and restore links;
//! - [`process`]: a real controller process to kill and restart, and the
//!   agents' console as a client.
//!
//! The package also builds `systest-edge-node` and `systest-cloud-controller`,
//! the real command lines under names of their own, for tests that kill and
//! restart processes.

pub mod cloud;
pub mod process;
pub mod proxy;

use std::path::PathBuf;
use std::time::Duration;

use edge_node::config::Config;
use edge_node::{Node, run};
use edgedesk_common::chat::{ClientFrame, PROTOCOL_VERSION, ServerFrame};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
/// A console WebSocket: always over the controller's TLS.
pub type ConsoleWs = WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

/// A client for a controller's REST API that trusts only `ca_pem`.
pub fn controller_http(ca_pem: &str) -> reqwest::Client {
    let tls = edgedesk_support::tls::pinned_client(ca_pem).expect("the controller's CA");
    reqwest::Client::builder()
        .use_preconfigured_tls((*tls).clone())
        .build()
        .expect("client")
}

/// Open `wss://…` for `req`, trusting only `ca_pem`.
pub async fn wss_connect(
    req: tokio_tungstenite::tungstenite::handshake::client::Request,
    ca_pem: &str,
) -> Result<ConsoleWs, String> {
    let uri = req.uri().clone();
    let host = uri.host().ok_or("no host")?.to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let tls = edgedesk_support::tls::pinned_client(ca_pem).map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from(host).map_err(|e| e.to_string())?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (ws, _) = tokio_tungstenite::client_async(req, stream)
        .await
        .map_err(|e| e.to_string())?;
    Ok(ws)
}

/// The environment that points a `cloud-controller` command at the store of
/// the controller whose data directory is `dir`: the folder, and its
/// PostgreSQL database when the suite runs with `EDGEDESK_TEST_POSTGRES`.
pub fn store_env(dir: &std::path::Path) -> [(&'static str, String); 2] {
    [
        (
            "EDGEDESK_CC_STORE__DATA_DIR",
            format!("{:?}", dir.to_string_lossy()),
        ),
        (
            "EDGEDESK_CC_STORE__POSTGRES_URL",
            format!("{:?}", cloud_controller::store::test_postgres_for(dir)),
        ),
    ]
}

/// `cloud-controller model publish BUNDLE` on the store of the controller
/// whose data directory is `dir` (as an operator runs it on the host),
/// `extra` added to its environment; panics, with what it said, if it fails.
pub fn publish_with_cli(
    bin: &std::path::Path,
    dir: &std::path::Path,
    bundle: &std::path::Path,
    extra: &[(&str, String)],
) {
    let out = std::process::Command::new(bin)
        .args(["model", "publish"])
        .arg(bundle)
        .envs(store_env(dir))
        .env(
            "EDGEDESK_CC_MODELS__ONNXRUNTIME_PATH",
            format!("{:?}", ort_path().to_string_lossy()),
        )
        .envs(extra.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "model publish: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The default bundle built by scripts/provision.sh.
pub fn bundle_dir() -> PathBuf {
    let dir = repo_root().join("build/models/default");
    assert!(
        dir.join("manifest.json").exists(),
        "no model bundle at {}; run scripts/provision.sh first",
        dir.display()
    );
    dir
}

pub fn ort_path() -> PathBuf {
    let p = std::env::var("ORT_DYLIB_PATH")
        .expect("ORT_DYLIB_PATH must point at libonnxruntime (source build/env.sh after scripts/provision.sh)");
    PathBuf::from(p)
}

pub fn config(dir: &tempfile::TempDir) -> Config {
    let mut c = Config::default();
    c.server.listen = "127.0.0.1:0".into();
    c.nlu.bundle = bundle_dir();
    c.nlu.onnxruntime_path = ort_path();
    c.store.path = dir.path().join("edge.db");
    c.server.shutdown_grace_secs = 2;
    c
}

/// `bin serve` (the `systest-edge-node` binary) for `cfg`, an enrolled
/// node's settings, on `127.0.0.1:port`, heartbeating every second: the
/// settings the process tests share. The caller adds its own environment
/// and output, and spawns it.
pub fn edge_process(bin: &std::path::Path, cfg: &Config, port: u16) -> std::process::Command {
    let q = |s: &str| format!("{s:?}");
    let mut cmd = std::process::Command::new(bin);
    cmd.arg("serve")
        .env("EDGEDESK_SERVER__LISTEN", q(&format!("127.0.0.1:{port}")))
        .env("EDGEDESK_STORE__PATH", q(&cfg.store.path.to_string_lossy()))
        .env("EDGEDESK_NLU__BUNDLE", q(&cfg.nlu.bundle.to_string_lossy()))
        .env("EDGEDESK_CLOUD__ENABLED", "true")
        .env(
            "EDGEDESK_CLOUD__CONTROLLER_URL",
            q(&cfg.cloud.controller_url),
        )
        .env("EDGEDESK_CLOUD__CA_SHA256", q(&cfg.cloud.ca_sha256))
        .env("EDGEDESK_CLOUD__NODE_ID", q(&cfg.cloud.node_id))
        .env("EDGEDESK_CLOUD__ENROLL_TOKEN", q(&cfg.cloud.enroll_token))
        .env(
            "EDGEDESK_CLOUD__IDENTITY_PATH",
            q(&cfg.cloud.identity_path.to_string_lossy()),
        )
        .env("EDGEDESK_CLOUD__HEARTBEAT_SECS", "1")
        .env("ORT_DYLIB_PATH", ort_path());
    cmd
}

/// A PostgreSQL cluster of its own (Debian's package, through
/// `scripts/pg-cluster.sh`) in a temporary folder, for the tests that stop
/// and start the database; stopped and removed when dropped.
pub struct PgCluster {
    dir: tempfile::TempDir,
    pub url: String,
}

impl PgCluster {
    fn script(cmd: &str, dir: &std::path::Path) -> String {
        let out = std::process::Command::new(repo_root().join("scripts/pg-cluster.sh"))
            .arg(cmd)
            .arg(dir)
            .output()
            .expect("scripts/pg-cluster.sh runs");
        assert!(
            out.status.success(),
            "pg-cluster.sh {cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    pub fn start() -> PgCluster {
        let dir = tempfile::tempdir().unwrap();
        let url = PgCluster::script("start", dir.path());
        PgCluster { dir, url }
    }

    /// Stop the server (fast shutdown: its connections are closed).
    pub fn stop(&self) {
        PgCluster::script("stop", self.dir.path());
    }

    /// Start it again on the same data.
    pub fn restart(&self) {
        PgCluster::script("start", self.dir.path());
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = std::process::Command::new(repo_root().join("scripts/pg-cluster.sh"))
            .arg("stop")
            .arg(self.dir.path())
            .output();
    }
}

/// Debian's `mosquitto` binary (scripts/test.sh installs the package).
pub fn mosquitto_bin() -> &'static str {
    ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("mosquitto is not installed: scripts/test.sh installs Debian's mosquitto package")
}

/// Debian's Mosquitto with `conf` (written to `dir/mosquitto.conf`).
pub fn spawn_mosquitto_with(dir: &std::path::Path, conf: &str) -> std::process::Child {
    let path = dir.join("mosquitto.conf");
    std::fs::write(&path, conf).unwrap();
    std::process::Command::new(mosquitto_bin())
        .arg("-c")
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// Wait until something listens on `127.0.0.1:port`.
pub async fn wait_port(port: u16) {
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    eventually(10, "port open", || async {
        tokio::net::TcpStream::connect(addr).await.is_ok()
    })
    .await;
}

/// Wait until a node process at `addr` answers `/readyz`.
pub async fn wait_edge_ready(addr: std::net::SocketAddr) {
    eventually(20, "edge ready", || async {
        tokio::net::TcpStream::connect(addr).await.is_ok()
            && http_get(addr, "/readyz").await.0 == 200
    })
    .await
}

pub struct TestNode {
    pub node: Option<Node>,
    pub token: CancellationToken,
    pub addr: std::net::SocketAddr,
}

impl TestNode {
    pub async fn start(config: Config) -> TestNode {
        let token = CancellationToken::new();
        let node = run(config, token.clone()).await.expect("node starts");
        let addr = node.addr;
        TestNode {
            node: Some(node),
            token,
            addr,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    fn running(&self) -> &Node {
        self.node.as_ref().expect("running")
    }

    pub fn store(&self) -> &edge_node::store::Store {
        &self.running().store
    }

    pub fn models(&self) -> &std::sync::Arc<edge_node::models::ModelManager> {
        &self.running().models
    }

    /// The active model's version.
    pub fn model_version(&self) -> String {
        self.models().active_version()
    }

    pub fn sessions(&self) -> &std::sync::Arc<edge_node::session::Sessions> {
        &self.running().sessions
    }

    /// Follow departed visitors as if the clock said `now` (ms); returns how
    /// many escalations were withdrawn.
    pub async fn departures(&self, now: i64) -> usize {
        self.sessions().check_departures(now).await
    }

    /// Kinds of the events waiting in the outbox, oldest first.
    pub async fn outbox_kinds(&self) -> Vec<String> {
        self.store()
            .outbox_peek(1000)
            .await
            .unwrap()
            .iter()
            .map(|e| e.event.body.kind().to_owned())
            .collect()
    }

    /// One housekeeping pass as if the clock said `now` (ms).
    pub async fn housekeeping(
        &self,
        now: i64,
    ) -> Result<edge_node::housekeeping::Pass, edge_node::store::StoreError> {
        self.running().keeper.pass(now).await
    }

    pub async fn stop(mut self) {
        self.token.cancel();
        if let Some(n) = self.node.take() {
            tokio::time::timeout(Duration::from_secs(10), n.wait())
                .await
                .expect("node stops within 10 s")
                .expect("node stops cleanly");
        }
    }

    pub async fn connect(&self) -> Ws {
        connect_url(&self.ws_url(), None).await
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        http_get(self.addr, path).await
    }
}

pub async fn connect_url(url: &str, origin: Option<&str>) -> Ws {
    let mut req = url.into_client_request().expect("request");
    if let Some(o) = origin {
        req.headers_mut()
            .insert("Origin", o.parse().expect("origin header"));
    }
    let (ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("ws connects");
    ws
}

/// A kiosk WebSocket whose TCP side takes data slowly: a small segment size
/// and receive window, so a node writing to a visitor who stops reading
/// blocks after a few tens of kilobytes (loopback's 64 KiB segments would
/// otherwise let megabytes pile up in the node's send buffer first).
pub async fn connect_slow_reader(addr: std::net::SocketAddr, url: &str) -> Ws {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).expect("socket");
    socket.set_tcp_mss(536).expect("TCP_MAXSEG");
    socket.set_recv_buffer_size(2048).expect("SO_RCVBUF");
    socket.connect(&addr.into()).expect("connect");
    socket.set_nonblocking(true).expect("non-blocking");
    let tcp = TcpStream::from_std(socket.into()).expect("tokio stream");
    let (ws, _) = tokio_tungstenite::client_async(
        url.into_client_request().expect("request"),
        tokio_tungstenite::MaybeTlsStream::Plain(tcp),
    )
    .await
    .expect("ws connects");
    ws
}

/// Minimal HTTP/1.1 GET (no client library needed for our few checks).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("write");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

pub async fn send(ws: &mut Ws, frame: &ClientFrame) {
    ws.send(Message::text(serde_json::to_string(frame).expect("json")))
        .await
        .expect("send");
}

/// A TCP port free on 127.0.0.1 at the time of asking.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Poll `f` until it returns true; panics naming `what` after `secs`.
pub async fn eventually<F, Fut>(secs: u64, what: &str, mut f: F)
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

pub async fn send_raw(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text.to_owned())).await.expect("send");
}

/// How long a test waits for a frame it expects. Generous: this is a
/// liveness bound, not a latency check (latency is benchmarked), and the
/// suite runs on two busy cores.
pub const FRAME_WAIT: Duration = Duration::from_secs(15);

/// Next server frame (skipping pings); panics after [`FRAME_WAIT`].
pub async fn recv(ws: &mut Ws) -> ServerFrame {
    loop {
        let msg = tokio::time::timeout(FRAME_WAIT, ws.next())
            .await
            .expect("a frame within FRAME_WAIT")
            .expect("stream open")
            .expect("frame ok");
        match msg {
            Message::Text(t) => {
                return serde_json::from_str(t.as_str()).expect("server frame parses");
            }
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// Wait for the close frame; returns its code.
pub async fn recv_close(ws: &mut Ws) -> Option<u16> {
    loop {
        match tokio::time::timeout(FRAME_WAIT, ws.next())
            .await
            .expect("close within FRAME_WAIT")
        {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    }
}

pub fn hello(session: Option<&str>) -> ClientFrame {
    ClientFrame::Hello {
        v: PROTOCOL_VERSION,
        session: session.map(str::to_owned),
        lang: None,
    }
}

/// A new visitor who chose `lang` on the page.
pub fn hello_in(lang: edgedesk_common::chat::Lang) -> ClientFrame {
    ClientFrame::Hello {
        v: PROTOCOL_VERSION,
        session: None,
        lang: Some(lang),
    }
}

pub fn msg(text: &str) -> ClientFrame {
    ClientFrame::Message {
        traceparent: None,
        text: text.into(),
        client_id: Some(format!("c-{text}")),
        payload: None,
    }
}

pub fn button(label: &str, payload: &str) -> ClientFrame {
    ClientFrame::Message {
        traceparent: None,
        text: label.into(),
        client_id: None,
        payload: Some(payload.into()),
    }
}

/// Hello and the welcome; returns (session token, welcome frame).
pub async fn start_session(ws: &mut Ws) -> (String, ServerFrame) {
    send(ws, &hello(None)).await;
    let w = recv(ws).await;
    match &w {
        ServerFrame::Welcome { session, .. } => (session.clone(), w.clone()),
        other => panic!("expected welcome, got {other:?}"),
    }
}

/// In a fresh session the visitor asks for a person and waits; returns the
/// session token and the conversation id.
pub async fn escalate(ws: &mut Ws) -> (String, String) {
    let (token, welcome) = start_session(ws).await;
    let ServerFrame::Welcome { conversation, .. } = welcome else {
        panic!("expected welcome")
    };
    let (_, r) = say(ws, &msg("I want to talk to a human")).await;
    assert!(
        matches!(
            &r[0],
            ServerFrame::Reply {
                state: edgedesk_common::chat::ChatState::WaitingForAgent,
                ..
            }
        ),
        "{r:?}"
    );
    (token, conversation)
}

/// Send a message, expect the ack and then `replies` replies; returns their texts.
pub async fn say(ws: &mut Ws, frame: &ClientFrame) -> (i64, Vec<ServerFrame>) {
    send(ws, frame).await;
    let ack = recv(ws).await;
    let ServerFrame::Ack { id, .. } = ack else {
        panic!("expected ack, got {ack:?}")
    };
    let mut replies = vec![recv(ws).await];
    // Drain further replies that arrive right behind (multi-reply turns).
    while let Ok(Some(Ok(Message::Text(t)))) =
        tokio::time::timeout(Duration::from_millis(50), ws.next()).await
    {
        replies.push(serde_json::from_str(t.as_str()).expect("frame"));
    }
    (id, replies)
}

pub fn reply_text(f: &ServerFrame) -> &str {
    match f {
        ServerFrame::Reply { text, .. } => text,
        other => panic!("expected reply, got {other:?}"),
    }
}
