//! The learning loop's first step, end to end with a real controller and
//! real nodes: the turns that taught a node something (out of scope, below
//! the threshold, escalated) reach the controller masked, with the model's
//! top guesses; the daily budget holds; a branch that opted out sends none;
//! old samples are deleted.

use edgedesk_common::chat::Lang;
use edgedesk_systest::cloud::*;
use edgedesk_systest::*;

async fn samples(cloud: &Cloud, query: &str) -> Vec<serde_json::Value> {
    cloud
        .get(&format!("/api/v1/samples?{query}"))
        .await
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// A visitor in `lang` says each line in turn.
async fn visit(node: &TestNode, lang: Lang, lines: &[&str]) {
    let mut ws = node.connect().await;
    send(&mut ws, &hello_in(lang)).await;
    recv(&mut ws).await;
    for line in lines {
        say(&mut ws, &msg(line)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turns_worth_a_label_reach_the_controller_masked_within_the_budget() {
    let cloud = Cloud::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node = edge(&cloud, &dir, "harbour").await;
    cloud.wait_online("harbour", 15).await;

    // Answered turns teach nothing; these do.
    visit(
        &node,
        Lang::En,
        &[
            "my pin is blocked",
            "what is the weather like on mars, mail me at jo@example.com",
            "blorp zzkx quux",
        ],
    )
    .await;
    visit(&node, Lang::Zh, &["今天火星天气怎么样"]).await;
    // An answer to a flow's question is never a sample, understood or not.
    visit(
        &node,
        Lang::En,
        &["I want to book an appointment", "grumble florp"],
    )
    .await;
    eventually(15, "samples at the controller", || async {
        samples(&cloud, "node=harbour").await.len() >= 3
    })
    .await;
    let got = samples(&cloud, "node=harbour").await;
    let texts: Vec<&str> = got.iter().map(|s| s["text"].as_str().unwrap()).collect();
    assert!(
        !texts.iter().any(|t| t.contains("pin is blocked")),
        "an answered turn is not a sample: {texts:?}"
    );
    assert!(
        !texts.iter().any(|t| t.contains("grumble")),
        "a flow's answer is not a sample: {texts:?}"
    );
    let mars = got
        .iter()
        .find(|s| s["text"].as_str().unwrap().contains("mars"))
        .expect("the out-of-scope turn");
    assert_eq!(mars["reason"], "out_of_scope", "{mars}");
    assert!(
        mars["text"].as_str().unwrap().contains("[email]")
            && !mars["text"].as_str().unwrap().contains("jo@example.com"),
        "masked before it left the branch: {mars}"
    );
    let guesses = mars["guesses"].as_array().unwrap();
    assert_eq!(guesses.len(), 3, "{mars}");
    assert_eq!(guesses[0]["label"], "out_of_scope");
    assert!(guesses[0]["score"].as_f64().unwrap() >= guesses[1]["score"].as_f64().unwrap());
    assert_eq!(mars["model_version"], "1.0.0");
    assert!(got.iter().any(|s| s["lang"] == "zh"), "{got:?}");
    // The event log keeps no second copy of the text.
    let logged = cloud.events("kind=sample").await;
    assert!(!logged.is_empty());
    assert!(
        logged.iter().all(|e| e["event"]["text"] == ""),
        "{logged:?}"
    );

    // An escalation: the line before "a person" is the sample.
    visit(
        &node,
        Lang::En,
        &["my thingy did the wobble", "I want to talk to a human"],
    )
    .await;
    eventually(15, "the escalation's sample", || async {
        samples(&cloud, "reason=escalated").await.len() == 1
    })
    .await;
    let esc = &samples(&cloud, "reason=escalated").await[0];
    assert_eq!(esc["text"], "my thingy did the wobble", "{esc}");

    // Filters, and retention.
    assert!(
        samples(&cloud, "lang=zh")
            .await
            .iter()
            .all(|s| s["lang"] == "zh")
    );
    assert_eq!(
        samples(&cloud, "unlabelled=true").await.len(),
        samples(&cloud, "").await.len()
    );
    let all = samples(&cloud, "").await.len();
    let deleted = cloud.ctl.store.prune_samples(i64::MAX).await.unwrap();
    assert_eq!(deleted, all);
    assert!(samples(&cloud, "").await.is_empty());
    node.stop().await;
    cloud.token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daily_budget_holds_and_a_branch_can_opt_out() {
    let cloud = Cloud::start().await;
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let small = edge_with(&cloud, &d1, "small", |c| c.learning.samples_per_day = 2).await;
    let out = edge_with(&cloud, &d2, "optout", |c| c.learning.enabled = false).await;
    for id in ["small", "optout"] {
        cloud.wait_online(id, 15).await;
    }
    let odd = [
        "what's the weather on mars",
        "sing me a song",
        "who won the football",
        "recipe for cake",
    ];
    visit(&small, Lang::En, &odd).await;
    visit(&out, Lang::En, &odd).await;
    eventually(15, "the budget's samples", || async {
        samples(&cloud, "node=small").await.len() == 2
    })
    .await;
    let (_, metrics) = small.get("/metrics").await;
    assert!(
        metrics.contains("edgedesk_samples_total{outcome=\"dropped_budget\"} 2"),
        "{metrics}"
    );
    // Everything else the opted-out node had to send has arrived: a goodbye
    // ends its conversation, and its summary is the proof.
    visit(&out, Lang::En, &["bye"]).await;
    eventually(15, "the opted-out node's summaries", || async {
        !cloud
            .events("node=optout&kind=conversation_summary")
            .await
            .is_empty()
    })
    .await;
    assert!(samples(&cloud, "node=optout").await.is_empty());
    assert_eq!(
        samples(&cloud, "node=small").await.len(),
        2,
        "no more later either"
    );
    small.stop().await;
    out.stop().await;
    cloud.token.cancel();
}
