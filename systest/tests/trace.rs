//! One trace from kiosk to agent and back, across real processes: a visitor's
//! line carrying a W3C trace context goes through the edge node (its turn),
//! inside a sealed envelope to the controller (ingestion, routing, the push
//! to the agent's console); the agent's reply goes back as a command (inside
//! a sealed envelope) to the node and reaches the kiosk with the trace
//! context of the node's span that delivered it.
//!
//! The collector is a **fake**: an in-process OTLP/HTTP receiver (axum)
//! that decodes what the two binaries export with the OTLP protobuf types and
//! keeps the spans for the test to check. The binaries use the real exporter
//! (`opentelemetry-otlp`, HTTP + protobuf).

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use edgedesk_common::chat::{ClientFrame, Sender, ServerFrame};
use edgedesk_systest::process::{
    CtlProcess, console_login, console_next, console_send, console_socket,
};
use edgedesk_systest::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use prost::Message;

#[derive(Debug, Clone)]
struct Span {
    trace: String,
    id: String,
    parent: String,
    name: String,
    service: String,
}

/// The fake collector: its base URL and what it received so far.
async fn fake_collector() -> (String, Arc<Mutex<Vec<Span>>>) {
    let spans = Arc::new(Mutex::new(Vec::new()));
    let keep = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let keep = keep.clone();
            async move {
                let Ok(req) = ExportTraceServiceRequest::decode(body) else {
                    return (axum::http::StatusCode::BAD_REQUEST, Vec::new());
                };
                let mut out = keep.lock().unwrap();
                for rs in req.resource_spans {
                    let service = rs
                        .resource
                        .iter()
                        .flat_map(|r| &r.attributes)
                        .find(|kv| kv.key == "service.name")
                        .and_then(|kv| kv.value.as_ref()?.value.clone())
                        .map(|v| match v {
                            any_value::Value::StringValue(s) => s,
                            other => format!("{other:?}"),
                        })
                        .unwrap_or_default();
                    for s in rs.scope_spans.into_iter().flat_map(|ss| ss.spans) {
                        out.push(Span {
                            trace: hex::encode(&s.trace_id),
                            id: hex::encode(&s.span_id),
                            parent: hex::encode(&s.parent_span_id),
                            name: s.name,
                            service: service.clone(),
                        });
                    }
                }
                // An empty ExportTraceServiceResponse.
                (axum::http::StatusCode::OK, Vec::new())
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), spans)
}

/// The span of `trace` named `name` whose parent is `parent`.
fn child(spans: &[Span], trace: &str, name: &str, parent: &str) -> Option<Span> {
    spans
        .iter()
        .find(|s| s.trace == trace && s.name == name && s.parent == parent)
        .cloned()
}

/// The chain kiosk → node → controller → console, and console → node →
/// kiosk, as `(name, service)` of each link, if every span has arrived.
fn chain(spans: &[Span], trace: &str, kiosk_span: &str, reply_span: &str) -> Option<Vec<Span>> {
    let turn = child(spans, trace, "kiosk.turn", kiosk_span)?;
    // The turn recorded several events; the escalation's ingestion leads
    // to the routing that assigned the chat.
    let route = spans
        .iter()
        .filter(|s| s.trace == trace && s.name == "controller.ingest" && s.parent == turn.id)
        .find_map(|ingest| {
            child(spans, trace, "controller.route", &ingest.id).map(|r| (ingest.clone(), r))
        })?;
    let push = child(spans, trace, "console.push", &route.1.id)?;
    let reply = spans
        .iter()
        .find(|s| s.trace == trace && s.name == "console.reply")?;
    let command = child(spans, trace, "edge.command", &reply.id)?;
    let deliver = child(spans, trace, "edge.deliver", &command.id)?;
    (deliver.id == reply_span).then(|| {
        vec![
            turn,
            route.0,
            route.1,
            push,
            reply.clone(),
            command,
            deliver,
        ]
    })
}

/// A controller (with `ctl_env`) and an enrolled node process exporting to
/// `otlp`, its log in `dir/edge.log`; the node's port once it is ready.
async fn start(
    otlp: &str,
    ctl_env: &[(&str, String)],
    dir: &tempfile::TempDir,
    cdir: &tempfile::TempDir,
) -> (CtlProcess, std::process::Child, u16) {
    let ctl = CtlProcess::start(
        Path::new(env!("CARGO_BIN_EXE_systest-cloud-controller")),
        cdir.path(),
        free_port(),
        free_port(),
        ctl_env,
    )
    .await;
    let cfg = ctl.node_config(dir, "branch-t").await;
    let port = free_port();
    let edge = edge_process(
        Path::new(env!("CARGO_BIN_EXE_systest-edge-node")),
        &cfg,
        port,
    )
    .env("EDGEDESK_TELEMETRY__OTLP_ENDPOINT", format!("{otlp:?}"))
    .env("EDGEDESK_TELEMETRY__EXPORT_DELAY_MS", "100")
    .env("EDGEDESK_LOG__LEVEL", "\"info\"")
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(dir.path().join("edge.log")).unwrap())
    .spawn()
    .unwrap();
    wait_edge_ready(format!("127.0.0.1:{port}").parse().unwrap()).await;
    (ctl, edge, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_runs_from_the_kiosk_to_the_agent_and_back() {
    let (otlp, spans) = fake_collector().await;
    let (edir, cdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ctl_env = [
        ("EDGEDESK_CC_TELEMETRY__OTLP_ENDPOINT", format!("{otlp:?}")),
        ("EDGEDESK_CC_TELEMETRY__EXPORT_DELAY_MS", "100".into()),
    ];
    let (ctl, mut edge, port) = start(&otlp, &ctl_env, &edir, &cdir).await;
    let log = edir.path().join("edge.log");
    ctl.create_agent("grace", "agent", 2).await;
    let base = ctl.base();
    let cookie = console_login(&base, &ctl.ca_pem, "grace").await;
    let mut console = console_socket(&base, &ctl.ca_pem, &cookie).await;
    eventually(15, "edge online", || ctl.node_online("branch-t")).await;

    // The page starts a trace: its line carries a trace context.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let kiosk_span = "00f067aa0ba902b7";
    let mut kiosk = connect_url(&format!("ws://127.0.0.1:{port}/ws"), None).await;
    start_session(&mut kiosk).await;
    let (_, frames) = say(
        &mut kiosk,
        &ClientFrame::Message {
            text: "I want to talk to a human".into(),
            client_id: None,
            payload: None,
            traceparent: Some(format!("00-{trace}-{kiosk_span}-01")),
        },
    )
    .await;
    // The bot's answer to that turn continues the page's trace.
    let bot = frames
        .iter()
        .find_map(|f| match f {
            ServerFrame::Reply { traceparent, .. } => traceparent.clone(),
            _ => None,
        })
        .expect("the turn's reply carries a trace context");
    assert!(bot.starts_with(&format!("00-{trace}-")), "{bot}");

    let assigned = console_next(&mut console, "assigned").await;
    let chat = assigned["chat"]["id"].as_str().unwrap().to_owned();
    console_send(
        &mut console,
        serde_json::json!({ "type": "message", "chat": chat, "text": "Hello, I'm Grace." }),
    )
    .await;
    let reply = loop {
        if let ServerFrame::Reply {
            from: Sender::Agent,
            text,
            traceparent,
            ..
        } = recv(&mut kiosk).await
        {
            assert_eq!(text, "Hello, I'm Grace.");
            break traceparent.expect("the agent's line reaches the kiosk with a trace context");
        }
    };
    let parts: Vec<&str> = reply.split('-').collect();
    assert_eq!(
        parts[1],
        trace,
        "the agent's reply is in the page's trace: {reply}; spans: {:?}",
        spans.lock().unwrap()
    );
    let reply_span = parts[2].to_owned();

    // Every hop's span reaches the collector, each the child of the one before.
    let mut links = None;
    eventually(20, "the whole chain at the collector", || {
        let found = chain(&spans.lock().unwrap(), trace, kiosk_span, &reply_span);
        let ok = found.is_some();
        links = found;
        async move { ok }
    })
    .await;
    let links = links.unwrap();
    let services: Vec<(&str, &str)> = links
        .iter()
        .map(|s| (s.name.as_str(), s.service.as_str()))
        .collect();
    assert_eq!(
        services,
        vec![
            ("kiosk.turn", "edgedesk-edge-node"),
            ("controller.ingest", "edgedesk-cloud-controller"),
            ("controller.route", "edgedesk-cloud-controller"),
            ("console.push", "edgedesk-cloud-controller"),
            ("console.reply", "edgedesk-cloud-controller"),
            ("edge.command", "edgedesk-edge-node"),
            ("edge.deliver", "edgedesk-edge-node"),
        ]
    );

    // Log lines inside traced spans carry the trace and span ids.
    edge.kill().unwrap();
    edge.wait().unwrap();
    let logged = std::fs::read_to_string(&log).unwrap();
    let command = &links[5];
    assert!(
        logged.lines().any(|l| l.contains("command executed")
            && l.contains(&format!("trace_id={trace}"))
            && l.contains(&format!("span_id={}", command.id))),
        "the node's log line names the trace and span {}: {logged}",
        command.id
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_trace_context_from_the_page_starts_a_new_trace_and_loses_nothing() {
    let (otlp, spans) = fake_collector().await;
    let (edir, cdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // The controller exports nothing here: the node alone starts new traces.
    let (_ctl, mut edge, port) = start(&otlp, &[], &edir, &cdir).await;
    let mut kiosk = connect_url(&format!("ws://127.0.0.1:{port}/ws"), None).await;
    start_session(&mut kiosk).await;
    for (case, bad) in [
        ("garbage", "not a trace context".to_owned()),
        (
            "zero trace id",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01".to_owned(),
        ),
        ("too long", format!("00-{}", "a".repeat(200))),
    ] {
        let (_, frames) = say(
            &mut kiosk,
            &ClientFrame::Message {
                text: "what are your opening hours".into(),
                client_id: None,
                payload: None,
                traceparent: Some(bad.clone()),
            },
        )
        .await;
        let tp = frames
            .iter()
            .find_map(|f| match f {
                ServerFrame::Reply { traceparent, .. } => traceparent.clone(),
                _ => None,
            })
            .unwrap_or_else(|| panic!("{case}: answered, in a trace of its own"));
        let parts: Vec<&str> = tp.split('-').collect();
        assert_eq!(parts.len(), 4, "{case}: {tp}");
        assert!(
            !bad.contains(parts[1]),
            "{case}: a new trace id, not the page's"
        );
        let new_trace = parts[1].to_owned();
        eventually(20, "the turn's span at the collector", || {
            let ok = spans
                .lock()
                .unwrap()
                .iter()
                .any(|s| s.trace == new_trace && s.name == "kiosk.turn" && s.parent.is_empty());
            async move { ok }
        })
        .await;
    }
    edge.kill().unwrap();
    edge.wait().unwrap();
}
