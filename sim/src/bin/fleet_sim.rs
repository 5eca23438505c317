//! `fleet-sim`: many lightweight simulated edge nodes in one process, each with
//! its own identity, enrolment, TLS MQTT connection, heartbeats and summary
//! traffic, against a running controller. Reports what was acknowledged, what
//! was lost, acknowledgement latency and the controller's memory.
//!
//! With `--resend S` a node sends again every summary not acknowledged
//! within S seconds, as an edge node's outbox does, so a run in which a
//! controller replica is killed shows whether anything is lost for good
//! (acknowledgement latency counts from the first send).
//!
//! `--backlog N` instead measures one node draining N queued events the way an
//! edge node does (batches of `--batch`, one batch in flight).
//!
//! `--handoff-agents A` measures live chats instead: A agents (console
//! WebSockets) and `--nodes` simulated branches, each escalating
//! `--chats-per-node` conversations; then each chat exchanges a line each way
//! every `--line-every` seconds. Reports agent → branch and branch → agent
//! latency (the branch's own hop to the visitor's page is not included).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use edgedesk_common::chat::Lang;
use edgedesk_common::envelope::{CONTROLLER, Envelope, Header, Identity, Peer, topic};
use edgedesk_common::event::{ConversationSummary, Event, EventBody};
use edgedesk_common::sealing::{Keyring, Outgoing, Recipient};
use edgedesk_common::sync::{
    Down, EnrollRequest, EnrollResponse, Heartbeat, Up, enroll_proof_message,
};
use edgedesk_sim::rss_kib;
use hdrhistogram::Histogram;
use rumqttc::{AsyncClient, MqttOptions, Packet, QoS};
use tokio::sync::Mutex;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "fleet-sim",
    about = "Simulated edge fleet for benchmarking the cloud controller"
)]
struct Args {
    /// Controller REST URL.
    #[arg(long, default_value = "https://127.0.0.1:8700")]
    url: String,
    /// The controller's CA (PEM), trusted for its HTTPS (default
    /// <data_dir>/mqtt-ca.pem of the controller; required for https://).
    #[arg(long, env = "EDGEDESK_CC_CA_FILE")]
    ca_file: Option<std::path::PathBuf>,
    /// Admin token of the controller.
    #[arg(long, env = "EDGEDESK_ADMIN_TOKEN", hide_env_values = true)]
    token: String,
    /// Simulated nodes.
    #[arg(long, default_value_t = 100)]
    nodes: usize,
    /// Heartbeat period per node, seconds.
    #[arg(long, default_value_t = 10)]
    heartbeat: u64,
    /// Conversation summaries per second across the fleet.
    #[arg(long, default_value_t = 50.0)]
    summaries: f64,
    /// Seconds of traffic.
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Node id prefix (ids must be new to the controller).
    #[arg(long, default_value = "sim")]
    prefix: String,
    /// Controller PID, to report its memory.
    #[arg(long)]
    pid: Option<u32>,
    /// Send again, as an edge node does, every summary not acknowledged
    /// within this many seconds (0: never; each summary is sent once).
    #[arg(long, default_value_t = 0)]
    resend: u64,
    /// Drain this many events from one node instead of running a fleet.
    #[arg(long)]
    backlog: Option<usize>,
    /// Events per envelope in backlog mode.
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Live-chat mode: this many agents.
    #[arg(long)]
    handoff_agents: Option<usize>,
    /// Live-chat mode: escalated conversations per node.
    #[arg(long, default_value_t = 10)]
    chats_per_node: usize,
    /// Live-chat mode: seconds between lines of one chat (each way).
    #[arg(long, default_value_t = 5.0)]
    line_every: f64,
    /// Model-delivery mode: every node downloads the largest file of this
    /// published release (id, name@version or version) over QUIC at once.
    #[arg(long)]
    fetch: Option<String>,
}

/// Live-chat measurements shared by the simulated branches and agents.
struct Probe {
    /// Agent lines sent, by text, waiting to reach a branch.
    a2v_pending: std::sync::Mutex<HashMap<String, Instant>>,
    /// Visitor lines sent, by text, waiting to reach an agent.
    v2a_pending: std::sync::Mutex<HashMap<String, Instant>>,
    a2v: std::sync::Mutex<Histogram<u64>>,
    v2a: std::sync::Mutex<Histogram<u64>>,
    assigned: AtomicU64,
}

impl Probe {
    fn new() -> Probe {
        let h = || {
            std::sync::Mutex::new(
                Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("histogram"),
            )
        };
        Probe {
            a2v_pending: Default::default(),
            v2a_pending: Default::default(),
            a2v: h(),
            v2a: h(),
            assigned: AtomicU64::new(0),
        }
    }
}

const QOS_UP: QoS = QoS::AtMostOnce;

#[derive(Default)]
struct Stats {
    sent: AtomicU64,
    acked: AtomicU64,
    resent: AtomicU64,
    heartbeats: AtomicU64,
    connect_failures: AtomicU64,
}

struct SimNode {
    id: String,
    identity: Identity,
    /// The controller's signing key, and an ephemeral key for its current
    /// sealing key (replaced when it announces a new one).
    controller: Peer,
    to_controller: std::sync::Mutex<Outgoing>,
    /// Simulated nodes do not rotate: their enrolled key is their only one.
    ring: Keyring,
    client: AsyncClient,
    seq: AtomicU64,
    outstanding: Mutex<HashMap<String, Pending>>,
}

/// A summary sent and not yet acknowledged.
struct Pending {
    event: Event,
    /// First sent (latency counts from here).
    first: Instant,
    /// Last sent (`--resend` counts from here).
    last: Instant,
}

impl Pending {
    fn new(event: Event) -> Pending {
        let now = Instant::now();
        Pending {
            event,
            first: now,
            last: now,
        }
    }
}

fn ephemeral(to: &Recipient) -> Outgoing {
    let mut eph = [0u8; 32];
    getrandom::fill(&mut eph).expect("random");
    Outgoing::new(to, eph, chrono::Utc::now().timestamp_millis())
}

impl SimNode {
    fn seal(&self, body: &Up) -> Vec<u8> {
        let mut nonce = [0u8; 24];
        getrandom::fill(&mut nonce).expect("random");
        let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        let id = uuid::Uuid::new_v4().to_string();
        let to = self.to_controller.lock().unwrap().clone();
        Envelope::seal(
            &self.identity,
            &to,
            Header {
                id: &id,
                from: &self.id,
                to: CONTROLLER,
                seq,
                ts: chrono::Utc::now().timestamp_millis(),
            },
            nonce,
            &serde_json::to_vec(body).unwrap_or_default(),
        )
        .to_json()
    }

    async fn send(&self, body: &Up) {
        let _ = self
            .client
            .publish(topic::up(&self.id), QOS_UP, false, self.seal(body))
            .await;
    }
}

fn summary(node: &str, n: u64) -> Event {
    Event {
        trace: None,
        id: uuid::Uuid::new_v4().to_string(),
        at: chrono::Utc::now().timestamp_millis(),
        body: EventBody::ConversationSummary(ConversationSummary {
            conversation: format!("{node}-c{n}"),
            lang: Lang::En,
            started_at: 0,
            ended_at: 1,
            visitor_turns: 4,
            intents: vec!["card_arrival".into(), "greeting".into()],
            escalated: false,
            reason: "goodbye".into(),
            transcript: Vec::new(),
        }),
    }
}

async fn enroll(
    http: &reqwest::Client,
    args: &Args,
    id: &str,
) -> Result<(Identity, EnrollResponse), String> {
    let t: serde_json::Value = http
        .post(format!("{}/api/v1/tokens", args.url))
        .bearer_auth(&args.token)
        .json(&serde_json::json!({ "node_id": id }))
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    let token = t["token"]
        .as_str()
        .ok_or("no token (wrong admin token?)")?
        .to_owned();
    let mut secret = [0u8; 64];
    getrandom::fill(&mut secret).map_err(|e| e.to_string())?;
    let identity = Identity::from_secret(&secret);
    let req = EnrollRequest {
        proof: identity.sign(&enroll_proof_message(id, &token)),
        token,
        node_id: id.to_owned(),
        keys: identity.public(),
        sw_version: "fleet-sim".into(),
    };
    let resp = http
        .post(format!("{}/api/v1/enroll", args.url))
        .json(&req)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!(
            "enrol {id}: {} {}",
            resp.status(),
            resp.text().await.unwrap_or_default()
        ));
    }
    Ok((identity, resp.json().await.map_err(|e| e.to_string())?))
}

async fn connect(
    id: String,
    identity: Identity,
    enrolled: EnrollResponse,
    stats: Arc<Stats>,
    latency: Arc<std::sync::Mutex<Histogram<u64>>>,
    probe: Option<Arc<Probe>>,
) -> Result<Arc<SimNode>, String> {
    let m = &enrolled.mqtt;
    let mut o = MqttOptions::new(id.clone(), m.host.clone(), m.port);
    o.set_credentials(m.username.clone(), m.password.clone());
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(1 << 20, 1 << 20);
    if m.tls {
        let tls = edgedesk_support::tls::pinned_client(m.ca_pem.as_deref().unwrap_or_default())
            .map_err(|e| e.to_string())?;
        o.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(tls),
        ));
    }
    let (client, mut ev) = AsyncClient::new(o, 64);
    ev.set_network_options(cloud_controller::link::transport::network_options());
    let controller: Peer = enrolled.controller.parse().map_err(|e| e.to_string())?;
    let node = Arc::new(SimNode {
        id: id.clone(),
        identity: identity.clone(),
        to_controller: std::sync::Mutex::new(ephemeral(controller.recipient())),
        ring: Keyring::new(identity.sealing_seed(), 0),
        controller,
        client: client.clone(),
        seq: AtomicU64::new(1),
        outstanding: Mutex::new(HashMap::new()),
    });
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let n = node.clone();
    tokio::spawn(async move {
        let mut ready = Some(ready_tx);
        loop {
            match ev.poll().await {
                Ok(rumqttc::Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = n
                        .client
                        .subscribe(topic::down(&n.id), QoS::AtLeastOnce)
                        .await;
                    let hello = Up::Hello {
                        connect_id: uuid::Uuid::new_v4().to_string(),
                        sw_version: "sim".into(),
                        seal_key: n.ring.current().to_base64(),
                    };
                    n.send(&hello).await;
                    if let Some(r) = ready.take() {
                        let _ = r.send(());
                    }
                }
                Ok(rumqttc::Event::Incoming(Packet::Publish(p))) => {
                    let Ok(env) = Envelope::from_json(&p.payload) else {
                        continue;
                    };
                    let Ok(plain) = env.open(&n.controller, &n.ring) else {
                        continue;
                    };
                    if let Ok(Down::SealKey { key }) = serde_json::from_slice(&plain) {
                        if let Ok(to) = Recipient::parse(&key) {
                            *n.to_controller.lock().unwrap() = ephemeral(&to);
                        }
                        continue;
                    }
                    if let (Ok(Down::Command(cmd)), Some(probe)) =
                        (serde_json::from_slice::<Down>(&plain), probe.as_ref())
                    {
                        if let edgedesk_common::sync::CommandBody::AgentMessage(m) = &cmd.body {
                            let text = m.text.clone();
                            if let Some(at) = probe.a2v_pending.lock().unwrap().remove(&text) {
                                let _ = probe
                                    .a2v
                                    .lock()
                                    .unwrap()
                                    .record(at.elapsed().as_micros() as u64);
                            }
                        }
                        let ack = Up::CommandAck {
                            id: cmd.id,
                            ok: true,
                            detail: "delivered".into(),
                        };
                        n.send(&ack).await;
                        continue;
                    }
                    if let Ok(Down::EventsAck { ids }) = serde_json::from_slice(&plain) {
                        let mut out = n.outstanding.lock().await;
                        for id in ids {
                            if let Some(p) = out.remove(&id) {
                                stats.acked.fetch_add(1, Ordering::Relaxed);
                                let _ = latency
                                    .lock()
                                    .unwrap()
                                    .record(p.first.elapsed().as_micros() as u64);
                            }
                        }
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(30), ready_rx)
        .await
        .map_err(|_| format!("{id}: no connection within 30 s"))?
        .map_err(|_| format!("{id}: connection task ended"))?;
    Ok(node)
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if let Some(model) = &args.fetch {
        run_fetch(&args, model).await;
        return;
    }
    let stats = Arc::new(Stats::default());
    let latency = Arc::new(std::sync::Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("histogram"),
    ));
    let http = rest_client(&args);
    let count = if args.backlog.is_some() {
        1
    } else {
        args.nodes
    };
    let probe = args.handoff_agents.map(|_| Arc::new(Probe::new()));
    let started = Instant::now();
    // Enrol and connect, 32 at a time.
    let gate = Arc::new(tokio::sync::Semaphore::new(32));
    let mut joins = Vec::new();
    for i in 0..count {
        let probe = probe.clone();
        let (args, http, stats, latency, gate) = (
            args.clone(),
            http.clone(),
            stats.clone(),
            latency.clone(),
            gate.clone(),
        );
        joins.push(tokio::spawn(async move {
            let _permit = gate.acquire().await;
            let id = format!("{}-{i:05}", args.prefix);
            let (identity, enrolled) = enroll(&http, &args, &id).await?;
            connect(id, identity, enrolled, stats, latency, probe).await
        }));
    }
    let mut nodes = Vec::new();
    for j in joins {
        match j.await {
            Ok(Ok(n)) => nodes.push(n),
            Ok(Err(e)) => {
                stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                eprintln!("fleet-sim: {e}");
            }
            Err(e) => eprintln!("fleet-sim: {e}"),
        }
    }
    println!(
        "nodes connected     {} of {count} in {:.1} s",
        nodes.len(),
        started.elapsed().as_secs_f64()
    );
    if nodes.is_empty() {
        std::process::exit(1);
    }

    if let (Some(agents), Some(probe)) = (args.handoff_agents, probe) {
        run_handoff(&args, &nodes, probe, agents).await;
        return;
    }

    if let Some(total) = args.backlog {
        let node = nodes[0].clone();
        let started = Instant::now();
        let mut made = 0u64;
        while (made as usize) < total {
            let n = args.batch.min(total - made as usize);
            let events: Vec<Event> = (0..n).map(|k| summary(&node.id, made + k as u64)).collect();
            {
                let mut out = node.outstanding.lock().await;
                for e in &events {
                    out.insert(e.id.clone(), Pending::new(e.clone()));
                }
            }
            made += n as u64;
            stats.sent.fetch_add(n as u64, Ordering::Relaxed);
            node.send(&Up::Events { events }).await;
            // One batch in flight, like an edge node: wait for its ack.
            let deadline = Instant::now() + Duration::from_secs(30);
            while !node.outstanding.lock().await.is_empty() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_micros(500)).await;
            }
        }
        let secs = started.elapsed().as_secs_f64();
        let acked = stats.acked.load(Ordering::Relaxed);
        println!("backlog             {total} events, batch {}", args.batch);
        println!(
            "acknowledged        {acked} (lost {})",
            total as u64 - acked
        );
        println!(
            "drain rate          {:.0} events/s ({secs:.1} s)",
            acked as f64 / secs
        );
        report_memory(&args);
        return;
    }

    // Fleet traffic: heartbeats per node, summaries spread over the fleet.
    let stop = Instant::now() + Duration::from_secs(args.duration);
    let mut tasks = Vec::new();
    for (i, node) in nodes.iter().cloned().enumerate() {
        let stats = stats.clone();
        let period = Duration::from_secs(args.heartbeat);
        let offset = period.mul_f64((i % 1000) as f64 / 1000.0);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(offset).await;
            let mut tick = tokio::time::interval(period);
            while Instant::now() < stop {
                tick.tick().await;
                let hb = Heartbeat {
                    sw_version: "sim".into(),
                    model_name: "sim".into(),
                    model_version: "1.0.0".into(),
                    ..Default::default()
                };
                node.send(&Up::Heartbeat(Box::new(hb))).await;
                stats.heartbeats.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let nodes2 = nodes.clone();
    let stats2 = stats.clone();
    let rate = args.summaries;
    tasks.push(tokio::spawn(async move {
        let period = Duration::from_secs_f64(1.0 / rate);
        let mut next = tokio::time::Instant::now();
        let mut n = 0u64;
        while Instant::now() < stop {
            tokio::time::sleep_until(next).await;
            next += period;
            let node = &nodes2[(n as usize * 7919) % nodes2.len()];
            let e = summary(&node.id, n);
            node.outstanding
                .lock()
                .await
                .insert(e.id.clone(), Pending::new(e.clone()));
            node.send(&Up::Events { events: vec![e] }).await;
            stats2.sent.fetch_add(1, Ordering::Relaxed);
            n += 1;
        }
    }));
    let resender = (args.resend > 0).then(|| {
        tokio::spawn(resend(
            nodes.clone(),
            stats.clone(),
            Duration::from_secs(args.resend),
        ))
    });
    let mut peak = 0;
    while Instant::now() < stop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Some((_, hwm)) = args.pid.and_then(rss_kib) {
            peak = hwm;
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    // Give the last acknowledgements time to arrive (and, with --resend,
    // the last resends).
    let drain_deadline = Instant::now() + Duration::from_secs(30 + 2 * args.resend);
    while stats.acked.load(Ordering::Relaxed) < stats.sent.load(Ordering::Relaxed)
        && Instant::now() < drain_deadline
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (sent, acked) = (
        stats.sent.load(Ordering::Relaxed),
        stats.acked.load(Ordering::Relaxed),
    );
    let h = latency.lock().unwrap();
    println!(
        "duration            {} s, heartbeat every {} s",
        args.duration, args.heartbeat
    );
    println!(
        "heartbeats sent     {}",
        stats.heartbeats.load(Ordering::Relaxed)
    );
    println!(
        "summaries sent      {sent} ({:.0}/s)",
        sent as f64 / args.duration as f64
    );
    if let Some(r) = resender {
        r.abort();
    }
    println!("acknowledged        {acked} (lost {})", sent - acked);
    if args.resend > 0 {
        println!(
            "sent again          {} (not acknowledged within {} s)",
            stats.resent.load(Ordering::Relaxed),
            args.resend
        );
    }
    println!(
        "ack latency         p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0
    );
    if peak > 0 {
        println!(
            "controller peak RSS {:.1} MiB (during the run)",
            peak as f64 / 1024.0
        );
    }
    report_memory(&args);
    if sent != acked {
        std::process::exit(1);
    }
}

/// `--resend`: every second, each node sends again, in one envelope, the
/// summaries it has waited `after` for since it last sent them.
async fn resend(nodes: Vec<Arc<SimNode>>, stats: Arc<Stats>, after: Duration) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        for node in &nodes {
            let events: Vec<Event> = {
                let mut out = node.outstanding.lock().await;
                out.values_mut()
                    .filter(|p| p.last.elapsed() >= after)
                    .map(|p| {
                        p.last = Instant::now();
                        p.event.clone()
                    })
                    .collect()
            };
            if !events.is_empty() {
                stats
                    .resent
                    .fetch_add(events.len() as u64, Ordering::Relaxed);
                node.send(&Up::Events { events }).await;
            }
        }
    }
}

fn report_memory(args: &Args) {
    if let Some((rss, hwm)) = args.pid.and_then(rss_kib) {
        println!(
            "controller RSS      {:.1} MiB now, peak {:.1} MiB",
            rss as f64 / 1024.0,
            hwm as f64 / 1024.0
        );
    }
}

async fn run_handoff(args: &Args, nodes: &[Arc<SimNode>], probe: Arc<Probe>, agents: usize) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    type Sink = futures_util::stream::SplitSink<
        tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
        Message,
    >;
    let http = rest_client(args);
    let total = nodes.len() * args.chats_per_node;
    let capacity = total.div_ceil(agents) + 1;
    let host = args
        .url
        .trim_start_matches("https://")
        .trim_end_matches('/')
        .to_owned();
    let chats: Arc<std::sync::Mutex<Vec<(String, usize)>>> = Arc::default();
    let mut sinks: Vec<Arc<Mutex<Sink>>> = Vec::new();
    for i in 0..agents {
        let username = format!("{}-agent{i}", args.prefix);
        let made = http
            .post(format!("{}/api/v1/agents", args.url))
            .bearer_auth(&args.token)
            .json(&serde_json::json!({ "username": username, "display_name": username, "role": "agent",
                "password": "benchmark password", "languages": ["en"], "capacity": capacity }))
            .send()
            .await
            .expect("create agent");
        assert!(
            made.status().is_success(),
            "create agent: {}",
            made.status()
        );
        let login = http
            .post(format!("{}/console/api/login", args.url))
            .json(&serde_json::json!({ "username": username, "password": "benchmark password" }))
            .send()
            .await
            .expect("login");
        let cookie = login.headers()["set-cookie"]
            .to_str()
            .unwrap_or_default()
            .split(';')
            .next()
            .unwrap_or_default()
            .to_owned();
        let mut req = format!("wss://{host}/console/ws")
            .into_client_request()
            .expect("request");
        req.headers_mut()
            .insert("cookie", cookie.parse().expect("cookie"));
        let ws = console_wss(args, &host, req).await;
        let (mut sink, mut stream) = ws.split();
        sink.send(Message::text(
            serde_json::json!({ "type": "presence", "state": "online" }).to_string(),
        ))
        .await
        .expect("presence");
        sinks.push(Arc::new(Mutex::new(sink)));
        let (probe, chats) = (probe.clone(), chats.clone());
        tokio::spawn(async move {
            while let Some(Ok(Message::Text(t))) = stream.next().await {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(t.as_str()) else {
                    continue;
                };
                match v["type"].as_str() {
                    Some("assigned") => {
                        chats
                            .lock()
                            .unwrap()
                            .push((v["chat"]["id"].as_str().unwrap_or_default().to_owned(), i));
                        probe.assigned.fetch_add(1, Ordering::Relaxed);
                    }
                    Some("line") => {
                        let text = v["line"]["text"].as_str().unwrap_or_default();
                        if let Some(at) = probe.v2a_pending.lock().unwrap().remove(text) {
                            let _ = probe
                                .v2a
                                .lock()
                                .unwrap()
                                .record(at.elapsed().as_micros() as u64);
                        }
                    }
                    _ => {}
                }
            }
        });
    }
    println!("agents online       {agents} (capacity {capacity} each)");
    // Every node escalates its conversations.
    for (k, node) in nodes.iter().enumerate() {
        let events: Vec<Event> = (0..args.chats_per_node)
            .map(|c| Event {
                trace: None,
                id: uuid::Uuid::new_v4().to_string(),
                at: chrono::Utc::now().timestamp_millis(),
                body: EventBody::Escalation(edgedesk_common::event::Escalation {
                    conversation: format!("{}-{k}-{c}", args.prefix),
                    lang: Lang::En,
                    reason: "requested".into(),
                    last_text: "I want a person".into(),
                    intents: vec!["human_agent".into()],
                    transcript: vec![],
                }),
            })
            .collect();
        node.send(&Up::Events { events }).await;
    }
    let started = Instant::now();
    while (probe.assigned.load(Ordering::Relaxed) as usize) < total
        && started.elapsed() < Duration::from_secs(120)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "chats assigned      {} of {total} in {:.1} s",
        probe.assigned.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
    // Traffic: a line each way per chat every `line_every` seconds.
    let stop = Instant::now() + Duration::from_secs(args.duration);
    let period = Duration::from_secs_f64(args.line_every);
    let assigned = chats.lock().unwrap().clone();
    let mut tasks = Vec::new();
    for (idx, (chat, agent)) in assigned.into_iter().enumerate() {
        let k: usize = chat
            .rsplit('-')
            .nth(1)
            .and_then(|x| x.parse().ok())
            .unwrap_or(0);
        let (node, sink, probe) = (
            nodes[k.min(nodes.len() - 1)].clone(),
            sinks[agent].clone(),
            probe.clone(),
        );
        let offset = period.mul_f64((idx % 997) as f64 / 997.0);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(offset).await;
            let mut n = 0i64;
            while Instant::now() < stop {
                n += 1;
                let a = format!("a {chat} {n}");
                probe
                    .a2v_pending
                    .lock()
                    .unwrap()
                    .insert(a.clone(), Instant::now());
                let frame =
                    serde_json::json!({ "type": "message", "chat": chat, "text": a }).to_string();
                let _ = sink.lock().await.send(Message::text(frame)).await;
                let v = format!("v {chat} {n}");
                probe
                    .v2a_pending
                    .lock()
                    .unwrap()
                    .insert(v.clone(), Instant::now());
                let line = edgedesk_common::event::ChatLine {
                    conversation: chat.clone(),
                    line: edgedesk_common::event::TranscriptLine {
                        id: n,
                        from: edgedesk_common::chat::Sender::Visitor,
                        text: v,
                        at: chrono::Utc::now().timestamp_millis(),
                    },
                };
                let event = Event {
                    trace: None,
                    id: uuid::Uuid::new_v4().to_string(),
                    at: line.line.at,
                    body: EventBody::ChatLine(line),
                };
                node.send(&Up::Events {
                    events: vec![event],
                })
                .await;
                tokio::time::sleep(period).await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let report = |name: &str, h: &Histogram<u64>, left: usize| {
        println!(
            "{name:<19} {} lines, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, undelivered {left}",
            h.len(),
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0,
            h.max() as f64 / 1000.0
        );
    };
    report(
        "agent -> branch",
        &probe.a2v.lock().unwrap(),
        probe.a2v_pending.lock().unwrap().len(),
    );
    report(
        "branch -> agent",
        &probe.v2a.lock().unwrap(),
        probe.v2a_pending.lock().unwrap().len(),
    );
    report_memory(args);
}

/// Model delivery: enrol `--nodes` nodes, then each downloads the release's
/// largest file over QUIC at the same moment, verified chunk by chunk as an
/// edge node does. Reports each node's throughput and the aggregate.
async fn run_fetch(args: &Args, model: &str) {
    use edge_node::models::fetch::Fetcher;
    let http = rest_client(args);
    let row: serde_json::Value = match http
        .get(format!("{}/api/v1/models/{model}", args.url))
        .bearer_auth(&args.token)
        .send()
        .await
    {
        Ok(r) if r.status().is_success() => r.json().await.unwrap_or_default(),
        Ok(r) => {
            eprintln!("fleet-sim: model {model}: {}", r.status());
            return;
        }
        Err(e) => {
            eprintln!("fleet-sim: {e}");
            return;
        }
    };
    let release: edgedesk_common::release::Release =
        match serde_json::from_str(row["signed"]["release"].as_str().unwrap_or_default()) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("fleet-sim: release: {e}");
                return;
            }
        };
    let Some((name, file)) = release.files.iter().max_by_key(|(_, f)| f.size) else {
        return;
    };
    println!(
        "release             {} {} ({name}: {:.1} MB)",
        release.name,
        release.version,
        file.size as f64 / 1e6
    );
    let mut fetchers = Vec::new();
    for i in 0..args.nodes {
        let id = format!("{}-{i:05}", args.prefix);
        let (identity, enrolled) = match enroll(&http, args, &id).await {
            Ok(x) => x,
            Err(e) => {
                eprintln!("fleet-sim: {e}");
                return;
            }
        };
        let Some(endpoint) = enrolled.models else {
            eprintln!("fleet-sim: the controller offers no model service");
            return;
        };
        let ctx = edge_node::models::FetchContext {
            node: id,
            identity,
            endpoint,
        };
        match Fetcher::connect(ctx).await {
            Ok(f) => fetchers.push(f),
            Err(e) => {
                eprintln!("fleet-sim: {e}");
                return;
            }
        }
    }
    let work = std::env::temp_dir().join(format!("fleet-sim-fetch-{}", std::process::id()));
    let started = Instant::now();
    let mut joins = Vec::new();
    for (i, f) in fetchers.into_iter().enumerate() {
        let (file, dir) = (file.clone(), work.join(format!("n{i}")));
        joins.push(tokio::spawn(async move {
            let t = Instant::now();
            let r = f.fetch(&file, &dir, &dir.join("blob")).await;
            let (secs, end) = (t.elapsed().as_secs_f64(), Instant::now());
            let _ = std::fs::remove_dir_all(&dir);
            f.close().await;
            r.map(|bytes| (bytes, secs, end))
        }));
    }
    let mut rates = Vec::new();
    let mut total = 0u64;
    let mut last = started;
    for j in joins {
        match j.await {
            Ok(Ok((bytes, secs, end))) => {
                total += bytes;
                rates.push(bytes as f64 / secs / 1e6);
                last = last.max(end);
            }
            Ok(Err(e)) => eprintln!("fleet-sim: fetch failed: {e}"),
            Err(e) => eprintln!("fleet-sim: {e}"),
        }
    }
    // Until the last transfer completed (closing connections not counted).
    let wall = last.duration_since(started).as_secs_f64();
    let _ = std::fs::remove_dir_all(&work);
    rates.sort_by(|a, b| a.total_cmp(b));
    let pick = |q: f64| rates[((rates.len() - 1) as f64 * q).round() as usize];
    println!(
        "completed           {} of {} nodes, {:.1} MB in {:.2} s: aggregate {:.0} MB/s",
        rates.len(),
        args.nodes,
        total as f64 / 1e6,
        wall,
        total as f64 / wall / 1e6
    );
    if !rates.is_empty() {
        println!(
            "per node MB/s       min {:.1}  p50 {:.1}  max {:.1}  (max/min {:.2})",
            pick(0.0),
            pick(0.5),
            pick(1.0),
            pick(1.0) / pick(0.0)
        );
    }
    report_memory(args);
}

/// The controller's CA, read from `--ca-file`.
fn controller_ca(args: &Args) -> Option<String> {
    if !args.url.starts_with("https://") {
        return None;
    }
    let path = args.ca_file.as_ref().unwrap_or_else(|| {
        eprintln!(
            "fleet-sim: --ca-file (or EDGEDESK_CC_CA_FILE) is required for an https:// controller"
        );
        std::process::exit(64)
    });
    Some(std::fs::read_to_string(path).unwrap_or_else(|e| {
        eprintln!("fleet-sim: {}: {e}", path.display());
        std::process::exit(66)
    }))
}

/// A REST client for the controller: over HTTPS it trusts only its CA.
fn rest_client(args: &Args) -> reqwest::Client {
    match controller_ca(args) {
        Some(ca) => {
            let tls = edgedesk_support::tls::pinned_client(&ca).expect("the controller's CA");
            reqwest::Client::builder()
                .use_preconfigured_tls((*tls).clone())
                .build()
                .expect("client")
        }
        None => reqwest::Client::new(),
    }
}

/// A console WebSocket over the controller's TLS (no Nagle delay).
async fn console_wss(
    args: &Args,
    host: &str,
    req: tokio_tungstenite::tungstenite::handshake::client::Request,
) -> tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let ca = controller_ca(args).unwrap_or_else(|| {
        eprintln!("fleet-sim: --handoff-agents needs an https:// controller");
        std::process::exit(64)
    });
    let tls = edgedesk_support::tls::pinned_client(&ca).expect("the controller's CA");
    let tcp = tokio::net::TcpStream::connect(host).await.expect("connect");
    let _ = tcp.set_nodelay(true);
    let name = host.rsplit_once(':').map_or(host, |(h, _)| h).to_owned();
    let name = rustls::pki_types::ServerName::try_from(name).expect("server name");
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .expect("TLS to the controller");
    tokio_tungstenite::client_async(req, stream)
        .await
        .expect("console socket")
        .0
}
