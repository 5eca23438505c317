//! What the controller's integration tests share: a loopback configuration
//! in a data directory, and a running controller on it.
#![allow(dead_code)] // each test crate uses its own part

use tokio_util::sync::CancellationToken;

/// A REST client that trusts only `ctl`'s CA (its HTTPS).
pub fn client(ctl: &cloud_controller::Controller) -> reqwest::Client {
    let ca = ctl.ca_pem.as_deref().expect("the controller serves HTTPS");
    let tls = edgedesk_support::tls::pinned_client(ca).unwrap();
    reqwest::Client::builder()
        .use_preconfigured_tls((*tls).clone())
        .build()
        .unwrap()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Every listener on loopback (free ports), state in `dir`.
pub fn config(dir: &std::path::Path) -> cloud_controller::config::Config {
    let mut c = cloud_controller::config::Config::default();
    c.http.listen = "127.0.0.1:0".into();
    c.mqtt.listen = format!("127.0.0.1:{}", free_port());
    c.models.quic_listen = "127.0.0.1:0".into();
    c.store.data_dir = dir.to_owned();
    c.store.postgres_url = cloud_controller::store::test_postgres_for(dir);
    c
}

/// A controller with the loopback configuration, in a fresh directory.
pub async fn controller() -> (
    cloud_controller::Controller,
    CancellationToken,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().unwrap();
    let token = CancellationToken::new();
    let ctl = cloud_controller::run(config(dir.path()), token.clone())
        .await
        .unwrap();
    (ctl, token, dir)
}

/// Store events as if `node` had sent them (the real ingestion path, with
/// its projection into chats, tickets and history).
pub async fn ingest(
    store: &cloud_controller::store::Store,
    node: &str,
    bodies: Vec<edgedesk_common::event::EventBody>,
    at: i64,
) {
    let ids = bodies
        .iter()
        .map(|_| uuid::Uuid::new_v4().to_string())
        .collect();
    ingest_with_ids(store, node, ids, bodies, at).await
}

/// [`ingest`] with the events' ids given (a ticket's id is its event's).
pub async fn ingest_with_ids(
    store: &cloud_controller::store::Store,
    node: &str,
    ids: Vec<String>,
    bodies: Vec<edgedesk_common::event::EventBody>,
    at: i64,
) {
    use cloud_controller::store::events::{Inbound, InboundKind};
    let events = ids
        .into_iter()
        .zip(bodies)
        .map(|(id, body)| edgedesk_common::event::Event {
            trace: None,
            id,
            at,
            body,
        })
        .collect();
    store
        .apply_inbound(
            vec![Inbound {
                node: node.into(),
                seq: 1,
                what: InboundKind::Events(events),
            }],
            at,
            false,
        )
        .await
        .unwrap();
}

/// An escalation of `chat` whose transcript is `lines` (visitor lines).
pub fn escalation(
    chat: &str,
    lang: &str,
    intents: &[&str],
    lines: &[&str],
    at: i64,
) -> edgedesk_common::event::EventBody {
    use edgedesk_common::chat::{Lang, Sender};
    use edgedesk_common::event::{Escalation, EventBody, TranscriptLine};
    EventBody::Escalation(Escalation {
        conversation: chat.into(),
        lang: if lang == "zh" { Lang::Zh } else { Lang::En },
        reason: "requested".into(),
        last_text: lines.last().map(|s| s.to_string()).unwrap_or_default(),
        intents: intents.iter().map(|s| s.to_string()).collect(),
        transcript: lines
            .iter()
            .enumerate()
            .map(|(i, t)| TranscriptLine {
                id: i as i64 + 1,
                from: Sender::Visitor,
                text: t.to_string(),
                at: at + i as i64,
            })
            .collect(),
    })
}

/// Enrol a node over the REST API (no MQTT connection: it stays offline).
pub async fn enrol(ctl: &cloud_controller::Controller, id: &str) {
    let http = client(ctl);
    let base = ctl.base_url.clone();
    let t: serde_json::Value = http
        .post(format!("{base}/api/v1/tokens"))
        .bearer_auth(&ctl.admin_token)
        .json(&serde_json::json!({ "node_id": id }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = t["token"].as_str().unwrap().to_owned();
    let identity = edgedesk_common::envelope::Identity::from_secret(&[5; 64]);
    let req = edgedesk_common::sync::EnrollRequest {
        proof: identity.sign(&edgedesk_common::sync::enroll_proof_message(id, &token)),
        token,
        node_id: id.into(),
        keys: identity.public(),
        sw_version: "test".into(),
    };
    let r = http
        .post(format!("{base}/api/v1/enroll"))
        .json(&req)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .put(format!("{base}/api/v1/nodes/{id}/labels"))
        .bearer_auth(&ctl.admin_token)
        .json(&serde_json::json!({ "labels": { "kind": "bank" } }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}
