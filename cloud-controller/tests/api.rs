//! The REST API and its documentation, and the CLI that mirrors it, against a
//! real controller (embedded broker, SQLite) on loopback.

mod support;
use support::*;

use std::process::Command;

#[test]
fn openapi_document_matches_the_code() {
    let generated = cloud_controller::http::api::openapi_document();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json");
    let committed = std::fs::read_to_string(path).expect("docs/openapi.json exists");
    assert!(
        generated == committed,
        "docs/openapi.json is out of date: run `cloud-controller openapi > docs/openapi.json`"
    );
    let doc: serde_json::Value = serde_json::from_str(&committed).unwrap();
    for path in [
        "/api/v1/tokens",
        "/api/v1/enroll",
        "/api/v1/nodes",
        "/api/v1/nodes/{id}",
        "/api/v1/events",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} documented");
    }
}

fn cli(ctl: &cloud_controller::Controller, args: &[&str]) -> std::process::Output {
    // The CLI trusts only the controller's CA (`--ca-file`).
    let ca = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca.path(), ctl.ca_pem.as_deref().unwrap()).unwrap();
    Command::new(env!("CARGO_BIN_EXE_cloud-controller"))
        .args([
            "--url",
            &ctl.base_url,
            "--token",
            &ctl.admin_token,
            "--ca-file",
            ca.path().to_str().unwrap(),
        ])
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_mirrors_the_rest_api() {
    let (ctl, token, _dir) = controller().await;
    let ctl2 = &ctl;
    let ca_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca_file.path(), ctl.ca_pem.as_deref().unwrap()).unwrap();
    let out = tokio::task::block_in_place(|| cli(ctl2, &["token", "create", "--node", "branch-1"]));
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["token"].as_str().unwrap().len(), 48);
    // One join string: the URL, the token and the CA's fingerprint.
    let join: edgedesk_common::sync::Join = v["join"].as_str().unwrap().parse().unwrap();
    assert_eq!(join.url, ctl.base_url);
    assert_eq!(join.token, v["token"].as_str().unwrap());
    assert_eq!(join.ca_sha256, ctl.ca_sha256);
    assert!(String::from_utf8_lossy(&out.stderr).contains(v["join"].as_str().unwrap()));
    // A token is bound to a node id unless asked otherwise.
    let out = tokio::task::block_in_place(|| cli(ctl2, &["token", "create"]));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--node"));
    let out = tokio::task::block_in_place(|| cli(ctl2, &["token", "create", "--any-node"]));
    assert!(out.status.success(), "{out:?}");
    // Without the CA the CLI refuses the controller's certificate.
    let out = tokio::task::block_in_place(|| {
        Command::new(env!("CARGO_BIN_EXE_cloud-controller"))
            .args([
                "--url",
                &ctl2.base_url,
                "--token",
                "t",
                "--ca-file",
                "/nonexistent/ca.pem",
                "nodes",
                "list",
            ])
            .output()
            .unwrap()
    });
    assert_eq!(out.status.code(), Some(66), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--ca-file"));
    let out = tokio::task::block_in_place(|| cli(ctl2, &["nodes", "list"]));
    assert!(out.status.success());
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap(),
        serde_json::json!([])
    );
    let out = tokio::task::block_in_place(|| cli(ctl2, &["nodes", "show", "nope"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("404"));
    let out = tokio::task::block_in_place(|| cli(ctl2, &["nodes", "label", "x", "novalue"]));
    assert_eq!(
        out.status.code(),
        Some(64),
        "bad KEY=VALUE is a usage error"
    );
    let out = tokio::task::block_in_place(|| cli(ctl2, &["events", "--kind", "escalation"]));
    assert!(out.status.success());
    let out = tokio::task::block_in_place(|| {
        Command::new(env!("CARGO_BIN_EXE_cloud-controller"))
            .args([
                "--url",
                "http://127.0.0.1:9",
                "--token",
                "t",
                "nodes",
                "list",
            ])
            .output()
            .unwrap()
    });
    assert_eq!(out.status.code(), Some(69), "unreachable controller");
    let out = tokio::task::block_in_place(|| {
        Command::new(env!("CARGO_BIN_EXE_cloud-controller"))
            .args([
                "--url",
                &ctl2.base_url,
                "--ca-file",
                ca_file.path().to_str().unwrap(),
                "--token",
                "wrong",
                "nodes",
                "list",
            ])
            .output()
            .unwrap()
    });
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401"),
        "{out:?}"
    );
    // Models and rollouts: empty lists, and a clear error for an unknown release.
    let out = tokio::task::block_in_place(|| cli(ctl2, &["model", "list"]));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
    let out = tokio::task::block_in_place(|| cli(ctl2, &["rollout", "status"]));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
    let out = tokio::task::block_in_place(|| {
        cli(
            ctl2,
            &[
                "rollout",
                "create",
                "--model",
                "9.9.9",
                "--selector",
                "kind=bank",
                "--waves",
                "1,50%,100%",
            ],
        )
    });
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("404") && err.contains("9.9.9"), "{err}");
    let out = tokio::task::block_in_place(|| {
        cli(
            ctl2,
            &["rollout", "create", "--model", "9.9.9", "--waves", "0"],
        )
    });
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("a wave of 0 nodes"),
        "{out:?}"
    );
    let out = tokio::task::block_in_place(|| cli(ctl2, &["rollout", "pause", "ro-none"]));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("404"),
        "{out:?}"
    );
    // Suggested intents: none before any grouping; deciding an unknown one
    // is a 404; a bad intent name says what a name is.
    let out = tokio::task::block_in_place(|| cli(ctl2, &["training", "suggestions"]));
    assert!(out.status.success(), "{out:?}");
    let page: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(page["grouping"]["state"], "idle");
    assert_eq!(page["suggestions"], serde_json::json!([]));
    let out = tokio::task::block_in_place(|| {
        cli(
            ctl2,
            &["training", "accept", "sg-none", "--intent", "card_arrival"],
        )
    });
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("404"),
        "{out:?}"
    );
    let out = tokio::task::block_in_place(|| {
        cli(
            ctl2,
            &["training", "accept", "sg-none", "--intent", "Bad Name"],
        )
    });
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("an intent name is"),
        "{out:?}"
    );
    let out = tokio::task::block_in_place(|| cli(ctl2, &["training", "dismiss", "sg-none"]));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors() {
    let (ctl, token, _dir) = controller().await;
    let http = client(&ctl);
    let url = |p: &str| format!("{}{p}", ctl.base_url);
    let r = http
        .post(url("/api/v1/tokens"))
        .bearer_auth(&ctl.admin_token)
        .json(&serde_json::json!({"node_id": "Bad Id"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("invalid node id"));
    let r = http
        .post(url("/api/v1/enroll"))
        .body("{not json")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = http
        .get(url("/api/v1/nodes/ghost/history"))
        .bearer_auth(&ctl.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = http
        .get(url("/api/v1/events?since=abc"))
        .bearer_auth(&ctl.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // Metrics are not public.
    let r = http.get(url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let metrics = http
        .get(url("/metrics"))
        .bearer_auth(&ctl.admin_token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("edgedesk_controller_events_new_total 0"),
        "{metrics}"
    );
    token.cancel();
}

#[test]
fn config_errors_exit_64() {
    let out = Command::new(env!("CARGO_BIN_EXE_cloud-controller"))
        .env("EDGEDESK_CC_MQTT__MODE", "sideways")
        .arg("serve")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("mqtt.mode"));
}

/// `nodes set-branch` takes the node's `[branch]` shape from a TOML (or
/// JSON) file; `nodes branch` shows what is kept. A file with an unknown key
/// is refused before anything is sent (exit 65, the key named); a value the
/// node would refuse comes back as the API's 400 with the field named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_sets_a_branch_from_a_file() {
    let (ctl, token, dir) = controller().await;
    enrol(&ctl, "branch-1").await;
    let ctl2 = &ctl;
    let file = dir.path().join("harbour.toml");
    std::fs::write(
        &file,
        "[hours]\nmon = \"09:00-17:00\"\nsat = \"10:00-13:00\"\n\n\
         [[holidays]]\ndate = \"2026-12-25\"\nname = { en = \"Christmas Day\", zh = \"圣诞节\" }\n\n\
         [facts.address]\nen = \"12 Harbour Road\"\nzh = \"海港路12号\"\n",
    )
    .unwrap();
    let path = file.to_str().unwrap();
    let out = tokio::task::block_in_place(|| cli(ctl2, &["nodes", "set-branch", "branch-1", path]));
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["delivery"], "pending");
    assert_eq!(v["branch"]["holidays"][0]["hours"], "closed");
    let out = tokio::task::block_in_place(|| cli(ctl2, &["nodes", "branch", "branch-1"]));
    assert!(out.status.success(), "{out:?}");
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["branch"]["facts"]["address"]["zh"], "海港路12号");

    std::fs::write(&file, "[hours]\nmon = \"09:00-17:00\"\n[factz]\n").unwrap();
    let out = tokio::task::block_in_place(|| cli(ctl2, &["nodes", "set-branch", "branch-1", path]));
    assert_eq!(out.status.code(), Some(65), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("factz"),
        "{out:?}"
    );
    std::fs::write(&file, "[hours]\nmon = \"17:00-09:00\"\n").unwrap();
    let out = tokio::task::block_in_place(|| cli(ctl2, &["nodes", "set-branch", "branch-1", path]));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("400") && err.contains("branch.hours.mon"),
        "{err}"
    );
    // Nothing changed.
    let out = tokio::task::block_in_place(|| cli(ctl2, &["nodes", "branch", "branch-1"]));
    let after: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(after["branch"], shown["branch"]);
    token.cancel();
}
