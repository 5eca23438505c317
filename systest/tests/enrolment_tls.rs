//! Enrolment trusts only the controller the join string names: a server on
//! the path with another CA (an attacker's proxy, here a second controller
//! with its own CA) gets no token and cannot answer with its own keys.

use edge_node::uplink::UplinkError;
use edge_node::uplink::enroll::{IdentityFile, enroll};
use edgedesk_systest::cloud::*;
use edgedesk_systest::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_another_ca_is_refused_and_never_sees_the_token() {
    let real = Cloud::start().await;
    let attacker = Cloud::start().await;
    let join: edgedesk_common::sync::Join = real
        .post(
            "/api/v1/tokens",
            serde_json::json!({ "node_id": "branch-t" }),
        )
        .await["join"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(join.url.starts_with("https://"), "{}", join.url);

    // The operator's join string, but the path leads to the attacker.
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&dir).cloud;
    cfg.enabled = true;
    cfg.node_id = "branch-t".into();
    cfg.controller_url = attacker.ctl.base_url.clone();
    cfg.enroll_token = join.token.clone();
    cfg.ca_sha256 = join.ca_sha256.clone().unwrap();
    let path = dir.path().join("identity.json");
    let mut file = IdentityFile::load_or_create(&path, "branch-t").unwrap();
    let err = enroll(&cfg, &mut file).await.unwrap_err();
    match &err {
        UplinkError::EnrollUntrusted(m) => assert!(m.contains("token was not sent"), "{m}"),
        other => panic!("expected EnrollUntrusted, got {other}"),
    }
    assert!(
        file.controller.is_none(),
        "nothing pinned from the attacker"
    );
    assert_eq!(
        attacker.get("/api/v1/nodes").await,
        serde_json::json!([]),
        "no enrolment reached the attacker"
    );

    // A fingerprint of garbage is refused before any connection.
    cfg.controller_url = real.ctl.base_url.clone();
    cfg.ca_sha256 = "sha256:1234".into();
    assert!(matches!(
        enroll(&cfg, &mut file).await,
        Err(UplinkError::EnrollUntrusted(_))
    ));

    // The same token, unspent, enrols with the real controller.
    cfg.ca_sha256 = join.ca_sha256.unwrap();
    enroll(&cfg, &mut file)
        .await
        .expect("enrols with the real controller");
    assert!(file.controller.is_some());
    real.token.cancel();
    attacker.token.cancel();
}

#[test]
fn plain_http_enrolment_is_refused_unless_allowed() {
    let env = |url: &str, insecure: bool| {
        vec![
            ("EDGEDESK_CLOUD__ENABLED".to_owned(), "true".to_owned()),
            ("EDGEDESK_CLOUD__NODE_ID".to_owned(), "branch-p".to_owned()),
            ("EDGEDESK_CLOUD__CONTROLLER_URL".to_owned(), url.to_owned()),
            (
                "EDGEDESK_CLOUD__INSECURE_ENROLLMENT".to_owned(),
                insecure.to_string(),
            ),
        ]
    };
    let e = edge_node::config::Config::load(None, env("http://ctl.example:8700", false))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cloud.controller_url") && e.contains("plain http"),
        "{e}"
    );
    assert!(edge_node::config::Config::load(None, env("http://ctl.example:8700", true)).is_ok());
    let bad_join = vec![(
        "EDGEDESK_CLOUD__JOIN".to_owned(),
        "https://ctl.example:8700#token=t&ca=sha256:00".to_owned(),
    )];
    let e = edge_node::config::Config::load(None, bad_join)
        .unwrap_err()
        .to_string();
    assert!(e.contains("cloud.join"), "{e}");
}
