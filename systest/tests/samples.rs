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

    // An escalation after an answer: the line before "a person" is the
    // sample (the bot answered it, yet the visitor wanted a person).
    visit(
        &node,
        Lang::En,
        &["how do I top up my account", "I want to talk to a human"],
    )
    .await;
    // A line the bot asked to rephrase, then escalated: sent once.
    visit(
        &node,
        Lang::En,
        &["my thingy did the wobble", "I want to talk to a human"],
    )
    .await;
    eventually(15, "the escalation's sample", || async {
        samples(&cloud, "reason=escalated").await.len() == 1
            && samples(&cloud, "")
                .await
                .iter()
                .any(|s| s["text"] == "my thingy did the wobble")
    })
    .await;
    let esc = &samples(&cloud, "reason=escalated").await[0];
    assert_eq!(esc["text"], "how do I top up my account", "{esc}");

    // A flow cancelled at its first question: the line that started it is
    // the sample (the bot took it for something it was not); a flow
    // cancelled after an answer is not.
    visit(
        &node,
        Lang::En,
        &["I want to book an appointment", "/cancel"],
    )
    .await;
    visit(&node, Lang::En, &["I lost my card", "1234", "/cancel"]).await;
    // A marker sent after both: once it is in, so is anything before it.
    visit(&node, Lang::En, &["zzyzx florbing quux"]).await;
    eventually(15, "the marker sample", || async {
        samples(&cloud, "")
            .await
            .iter()
            .any(|s| s["text"] == "zzyzx florbing quux")
    })
    .await;
    assert_eq!(samples(&cloud, "reason=cancelled").await.len(), 1);
    let wobble: Vec<_> = samples(&cloud, "")
        .await
        .into_iter()
        .filter(|s| s["text"] == "my thingy did the wobble")
        .collect();
    assert_eq!(wobble.len(), 1, "one line, one sample: {wobble:?}");
    let cancelled = &samples(&cloud, "reason=cancelled").await[0];
    assert_eq!(
        cancelled["text"], "I want to book an appointment",
        "{cancelled}"
    );
    assert_eq!(cancelled["guesses"], serde_json::json!([]), "{cancelled}");

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

/// Whoever labels a sample can read the conversation around it, once the
/// branch has sent it (when it ends); before that the console says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_labeller_reads_the_conversation_around_a_sample_once_it_ended() {
    let cloud = Cloud::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node = edge(&cloud, &dir, "quay").await;
    cloud.wait_online("quay", 15).await;
    let mut ws = node.connect().await;
    start_session(&mut ws).await;
    say(&mut ws, &msg("my pin is blocked")).await;
    say(&mut ws, &msg("what is the weather like on mars")).await;
    eventually(15, "the sample", || async {
        !samples(&cloud, "node=quay").await.is_empty()
    })
    .await;
    let id = samples(&cloud, "node=quay").await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    cloud.create_agent("ada", "Ada", &["en"], 2).await;
    let cookie = cloud.console_cookie("ada").await;
    let path = format!("/console/api/samples/{id}/conversation");
    let status = |path: String| {
        let req = cloud.http.get(cloud.url(&path)).header("cookie", &cookie);
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (st, body) = status(path.clone()).await;
    assert_eq!(st, 404, "{body}");
    assert!(body.contains("when it ends"), "{body}");
    say(&mut ws, &msg("goodbye")).await;
    eventually(15, "the conversation at the controller", || async {
        status(path.clone()).await.0 == 200
    })
    .await;
    let v = cloud.console_get(&cookie, &path).await;
    let texts: Vec<&str> = v["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["text"].as_str().unwrap())
        .collect();
    assert!(texts.contains(&"my pin is blocked"), "{texts:?}");
    assert!(
        texts.contains(&"what is the weather like on mars"),
        "{texts:?}"
    );
    assert!(texts.len() >= 4, "the bot's replies too: {texts:?}");
    assert_eq!(
        status("/console/api/samples/nope/conversation".into())
            .await
            .0,
        404
    );
}

/// Supervisors get a share of their colleagues' labels for a second look:
/// they confirm or overrule; agents have no such queue; their own labels
/// are not in theirs; a wrong intent name is refused by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisors_review_a_share_of_the_labels_and_can_overrule() {
    let cloud = Cloud::start_with(|c| c.learning.review_fraction = 1.0).await;
    let dir = tempfile::tempdir().unwrap();
    let node = edge(&cloud, &dir, "pier").await;
    cloud.wait_online("pier", 15).await;
    visit(
        &node,
        Lang::En,
        &["what is the weather like on mars", "blorp zzkx quux"],
    )
    .await;
    eventually(15, "two samples", || async {
        samples(&cloud, "node=pier").await.len() == 2
    })
    .await;
    let got = samples(&cloud, "node=pier").await;
    let id = |i: usize| got[i]["id"].as_str().unwrap().to_owned();
    cloud.create_agent("ada", "Ada Agent", &["en"], 2).await;
    cloud
        .create_account("sue", "Sue Supervisor", "supervisor", &["en"], 2)
        .await;
    let (ada, sue) = (
        cloud.console_cookie("ada").await,
        cloud.console_cookie("sue").await,
    );
    let label = |i: usize| format!("/console/api/samples/{}/label", id(i));
    assert_eq!(
        cloud
            .console_post(&ada, &label(0), serde_json::json!({"label": "greeting"}))
            .await
            .0,
        200
    );
    assert_eq!(
        cloud
            .console_post(
                &sue,
                &label(1),
                serde_json::json!({"label": "out_of_scope"})
            )
            .await
            .0,
        200
    );
    // An agent has no review queue.
    let r = cloud
        .http
        .get(cloud.url("/console/api/review"))
        .header("cookie", &ada)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // The supervisor's queue: the agent's label, not her own.
    let queue = cloud.console_get(&sue, "/console/api/review").await;
    let queue = queue.as_array().unwrap();
    assert_eq!(queue.len(), 1, "{queue:?}");
    assert_eq!(queue[0]["id"], id(0).as_str());
    assert_eq!(queue[0]["label"], "greeting");
    assert_eq!(queue[0]["labelled_by_name"], "Ada Agent");
    let review = format!("/console/api/samples/{}/review", id(0));
    let (st, body) = cloud
        .console_post(&sue, &review, serde_json::json!({"label": "Not An Intent"}))
        .await;
    assert_eq!(st, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("intent name"),
        "{body}"
    );
    let (st, _) = cloud
        .console_post(&ada, &review, serde_json::json!({}))
        .await;
    assert_eq!(st, 403, "an agent cannot review");
    let (st, body) = cloud
        .console_post(&sue, &review, serde_json::json!({"label": "out_of_scope"}))
        .await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["label"], "out_of_scope");
    assert!(body["reviewed_by"].is_string(), "{body}");
    assert_eq!(
        cloud.console_get(&sue, "/console/api/review").await,
        serde_json::json!([]),
        "reviewed once"
    );
    let (st, _) = cloud
        .console_post(
            &sue,
            "/console/api/samples/nope/review",
            serde_json::json!({}),
        )
        .await;
    assert_eq!(st, 404);
}
