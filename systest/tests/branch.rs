//! Branch knowledge set from the controller: a real controller and a real
//! node (ONNX Runtime, SQLite). An operator sets the branch's address, hours
//! and facts over REST; a visitor asking at the kiosk gets them in English
//! and Chinese; the node keeps them across a restart; a node that was off
//! when they changed gets them when it is back; mistakes are refused with
//! the field named and change nothing.

use edgedesk_common::chat::Lang;
use edgedesk_systest::cloud::*;
use edgedesk_systest::*;

/// A fresh visitor in `lang` asks `text`; the bot's answer.
async fn ask(node: &TestNode, lang: Lang, text: &str) -> String {
    let mut ws = node.connect().await;
    send(&mut ws, &hello_in(lang)).await;
    recv(&mut ws).await;
    let (_, r) = say(&mut ws, &msg(text)).await;
    reply_text(&r[0]).to_owned()
}

async fn put_branch(cloud: &Cloud, node: &str, body: &str) -> (u16, serde_json::Value) {
    let r = cloud
        .http
        .put(cloud.url(&format!("/api/v1/nodes/{node}/branch")))
        .bearer_auth(&cloud.ctl.admin_token)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

async fn wait_applied(cloud: &Cloud, node: &str) -> serde_json::Value {
    let path = format!("/api/v1/nodes/{node}/branch");
    eventually(15, "the node applied the branch settings", || async {
        cloud.get(&path).await["delivery"] == "applied"
    })
    .await;
    cloud.get(&path).await
}

const HARBOUR: &str = r#"{
  "hours": {"mon": "09:00-17:00", "tue": "09:00-17:00", "wed": "09:00-17:00",
            "thu": "09:00-17:00", "fri": "09:00-17:00", "sat": "10:00-13:00"},
  "facts": {
    "address": {"en": "12 Harbour Road, ground floor.", "zh": "海港路12号一楼。"},
    "directions": {"en": "Exit B of Harbour station.", "zh": "海港站B出口。"}
  }
}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn branch_facts_set_from_the_controller_reach_the_kiosk_and_survive() {
    let cloud = Cloud::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = edge_config(&cloud, &dir, "harbour").await;
    let node = TestNode::start(cfg.clone()).await;
    cloud.wait_online("harbour", 15).await;

    // Nothing set yet: the bot says it does not know, and offers a person.
    let before = ask(&node, Lang::En, "Where is this branch?").await;
    assert!(before.contains("don't have that information"), "{before}");
    let r = cloud
        .http
        .get(cloud.url("/api/v1/nodes/harbour/branch"))
        .bearer_auth(&cloud.ctl.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);

    let (status, view) = put_branch(&cloud, "harbour", HARBOUR).await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["updated_by"], "api");
    let applied = wait_applied(&cloud, "harbour").await;
    assert_eq!(
        applied["branch"]["facts"]["address"]["zh"],
        "海港路12号一楼。"
    );

    let en = ask(&node, Lang::En, "Where is this branch?").await;
    assert_eq!(
        en,
        "12 Harbour Road, ground floor. Exit B of Harbour station."
    );
    let zh = ask(&node, Lang::Zh, "这个网点在哪").await;
    assert_eq!(zh, "海港路12号一楼。海港站B出口。");
    let hours = ask(&node, Lang::En, "What time do you open?").await;
    assert!(
        hours.contains("Monday to Friday 9:00–17:00, Saturday 10:00–13:00"),
        "{hours}"
    );

    // Mistakes are refused, named, and change nothing.
    let cases = [
        (
            "hours backwards",
            r#"{"hours": {"mon": "17:00-09:00"}}"#,
            400,
            "branch.hours.mon",
        ),
        (
            "unknown day",
            r#"{"hours": {"someday": "09:00-17:00"}}"#,
            400,
            "unknown day",
        ),
        (
            "unknown fact",
            r#"{"facts": {"adress": {"en": "x"}}}"#,
            400,
            "unknown fact \"adress\"",
        ),
        (
            "unknown key",
            r#"{"hour": {}}"#,
            400,
            "unknown field `hour`",
        ),
        (
            "holiday date",
            r#"{"holidays": [{"date": "31/12"}]}"#,
            400,
            "is not a date",
        ),
        ("not JSON", "{hours:", 400, "branch settings"),
    ];
    for (name, body, want_status, want) in cases {
        let (status, err) = put_branch(&cloud, "harbour", body).await;
        assert_eq!(status, want_status, "{name}: {err}");
        assert!(
            err["error"].as_str().unwrap_or("").contains(want),
            "{name}: {err}"
        );
    }
    let (status, err) = put_branch(&cloud, "nowhere", HARBOUR).await;
    assert_eq!(status, 404, "{err}");
    // The generic command endpoint sends people to the checked one.
    let r = cloud
        .http
        .post(cloud.url("/api/v1/nodes/harbour/commands"))
        .bearer_auth(&cloud.ctl.admin_token)
        .json(&serde_json::json!({"kind": "set_branch", "args": {"facts": {}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert!(r.text().await.unwrap().contains("/branch"));
    let still = cloud.get("/api/v1/nodes/harbour/branch").await;
    assert_eq!(still["branch"], applied["branch"]);
    assert_eq!(
        ask(&node, Lang::En, "Where is this branch?").await,
        "12 Harbour Road, ground floor. Exit B of Harbour station."
    );

    // The node keeps what the controller set across a restart (the
    // controller sends an acknowledged command only once).
    node.stop().await;
    let node = TestNode::start(cfg.clone()).await;
    assert_eq!(
        ask(&node, Lang::Zh, "这个网点在哪").await,
        "海港路12号一楼。海港站B出口。"
    );
    // A change made while the node is off reaches it when it is back.
    node.stop().await;
    let moved = HARBOUR.replace("12 Harbour Road", "40 Quay Street");
    let (status, view) = put_branch(&cloud, "harbour", &moved).await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["delivery"], "pending");
    let node = TestNode::start(cfg).await;
    wait_applied(&cloud, "harbour").await;
    assert_eq!(
        ask(&node, Lang::En, "Where is this branch?").await,
        "40 Quay Street, ground floor. Exit B of Harbour station."
    );
    node.stop().await;
    cloud.token.cancel();
}
