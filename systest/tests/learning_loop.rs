//! The learning loop end to end, with real parts: a controller (training
//! runs with the real training script as a child process, the regression
//! gate, signing, shadow and waves) and three edge nodes serving a model
//! that lacks one intent (`queue_ticket`, trained here from the
//! repository's data without it). Visitors ask that intent in English and
//! Chinese (30 questions); a supervisor labels them through the console
//! API; the loop trains, gates, shadows and rolls out; afterwards every
//! node serves the new model and recognises phrasings no one labelled.
//! The wall time from the last label to the whole fleet serving the model
//! is printed (docs/BENCHMARKS.md records it).

use std::path::{Path, PathBuf};
use std::time::Instant;

use edgedesk_common::chat::Lang;
use edgedesk_systest::cloud::*;
use edgedesk_systest::*;

const NODES: [&str; 3] = ["n00", "n01", "n02"];
/// The intent left out of the base model's data…
const INTENT: &str = "queue_ticket";
/// …and the new intent people label its questions as (no knowledge base
/// has an answer for it: the supervisor writes one, and it ships with the model).
const NEW: &str = "queue_number";
const ANSWER_EN: &str =
    "Take a number at the machine by the door; your number shows on the screen.";
const ANSWER_ZH: &str = "请在门口的取号机取号，叫号时屏幕会显示您的号码。";

/// `EDGEDESK_LEARNING_ENCODER=1`: the scenario's models carry the
/// multilingual sentence encoder (as the shipped 2.0.0 does), and the
/// candidate its label memory. Each training then takes about five
/// minutes instead of one (the scenario about twelve), so the test
/// command runs the TF-IDF variant; docs/LEARNING.md records both figures
/// and how to run this one.
fn with_encoder() -> bool {
    std::env::var("EDGEDESK_LEARNING_ENCODER").is_ok_and(|v| v == "1")
}

/// The encoder for the scenario, in `dir`: build/models/e5 without the
/// layers scripts/e5_finetune.py tuned, because they learnt from every
/// intent's rows, the left-out one's too; a fleet's encoder never saw the
/// intent its people are teaching it.
fn encoder_without_tuning(dir: &Path) -> PathBuf {
    let out = dir.join("e5");
    std::fs::create_dir_all(&out).unwrap();
    for f in std::fs::read_dir(repo_root().join("build/models/e5")).unwrap() {
        let f = f.unwrap();
        let name = f.file_name();
        if f.file_type().unwrap().is_file() && !name.to_string_lossy().starts_with("tuned") {
            std::fs::copy(f.path(), out.join(&name)).unwrap();
        }
    }
    out
}

fn python() -> String {
    std::env::var("EDGEDESK_TRAIN_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// The repository's data without one intent (its training rows and golden lines).
fn data_without(intent: &str, dir: &Path) -> PathBuf {
    let out = dir.join("data");
    for sub in ["banking77", "clinc150-oos", "intents"] {
        std::fs::create_dir_all(out.join(sub)).unwrap();
        for f in std::fs::read_dir(repo_root().join("data").join(sub)).unwrap() {
            let f = f.unwrap().path();
            let text = std::fs::read_to_string(&f).unwrap();
            let kept: String = text
                .split_inclusive('\n')
                .filter(|l| !l.trim_end().ends_with(&format!(",{intent}")))
                .collect();
            std::fs::write(out.join(sub).join(f.file_name().unwrap()), kept).unwrap();
        }
    }
    out
}

/// The intent's rows in the repository: (text, lang), English then Chinese.
fn intent_rows(intent: &str) -> Vec<(String, Lang)> {
    let mut r =
        csv::Reader::from_path(repo_root().join("data/intents/branch_intents.csv")).unwrap();
    r.records()
        .map(|x| x.unwrap())
        .filter(|x| &x[1] == intent)
        .map(|x| {
            let lang = Lang::detect(&x[0]).unwrap_or(Lang::En);
            (x[0].to_owned(), lang)
        })
        .collect()
}

/// Train a bundle with the training script, as `provision.sh` does.
fn train(data: &Path, encoder: &Path, out: &Path, version: &str) -> PathBuf {
    let st = std::process::Command::new(python())
        .arg(repo_root().join("scripts/train_model.py"))
        .args([
            "--data".as_ref(),
            data.as_os_str(),
            "--out".as_ref(),
            out.as_os_str(),
        ])
        .args(["--version", version])
        .args(if with_encoder() {
            vec!["--encoder".to_owned(), encoder.display().to_string()]
        } else {
            vec![]
        })
        .stdout(std::process::Stdio::null())
        .status()
        .expect("the training script runs (scripts/provision.sh installs its Python)");
    assert!(st.success(), "training the base model failed");
    out.to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn labels_become_a_model_the_whole_fleet_serves() {
    let work = tempfile::tempdir().unwrap();
    let data = data_without(INTENT, work.path());
    let encoder = if with_encoder() {
        encoder_without_tuning(work.path())
    } else {
        repo_root().join("build/models/e5")
    };
    let base = train(&data, &encoder, &work.path().join("base"), "1.0.0");
    let script = repo_root().join("scripts/train_model.py");
    let cloud = Cloud::start_with(|c| {
        c.models.tick_ms = 100;
        c.training.command = vec![python(), script.display().to_string()];
        c.training.data_dir = data.clone();
        c.training.timeout_secs = 1800;
        c.training.encoder_dir = encoder.clone();
        // Every label trains: which ones a share would hold out depends on
        // the samples' random ids, and with a fifth held out the unseen
        // phrasings recognised ranged from under 4 to 9 of 18 between runs.
        c.training.held_out_fraction = 0.0;
    })
    .await;
    let released = cloud.publish(&base).await;
    let mut nodes = Vec::new();
    let mut dirs = Vec::new();
    for id in NODES {
        let dir = tempfile::tempdir().unwrap();
        let b = base.clone();
        nodes.push(edge_with(&cloud, &dir, id, move |c| c.nlu.bundle = b).await);
        dirs.push(dir);
        cloud.wait_online(id, 20).await;
    }
    assert!(nodes.iter().all(|n| n.model_version() == "1.0.0"));

    // Every third row of each eighth is never asked: the phrasings the
    // fleet must recognise afterwards without anyone labelling them.
    let rows = intent_rows(INTENT);
    assert_eq!(rows.len(), 48);
    let (unseen, asked): (Vec<_>, Vec<_>) = rows
        .iter()
        .enumerate()
        .partition(|(i, _)| [2, 5, 7].contains(&(i % 8)));
    assert_eq!((asked.len(), unseen.len()), (30, 18));
    let model = nodes[0].models().active.get();
    assert!(
        unseen
            .iter()
            .all(|(_, (t, _))| model.classify(t).unwrap().label != INTENT),
        "the base model cannot know the intent"
    );

    // Visitors ask. A question the bot answered (wrongly) is followed by
    // "a person, please", which sends it up as an escalation's sample; a
    // flow it started (the base model took "I lost my queue ticket" for a
    // lost card) is cancelled, which sends the line up. A question the model took for
    // "a person, please" itself escalates with nothing earlier to learn
    // from: no sample (docs/LEARNING.md).
    use edgedesk_common::chat::{ChatState, ServerFrame};
    let mut texts: Vec<&str> = Vec::new();
    for (n, (_, (text, lang))) in asked.iter().enumerate() {
        let mut ws = nodes[n % NODES.len()].connect().await;
        send(&mut ws, &hello_in(*lang)).await;
        recv(&mut ws).await;
        let (_, r) = say(&mut ws, &msg(text)).await;
        let ServerFrame::Reply { state, intent, .. } = &r[0] else {
            panic!("{r:?}")
        };
        match state {
            ChatState::WaitingForAgent => continue,
            ChatState::InFlow => {
                say(&mut ws, &msg("/cancel")).await;
            }
            _ if intent.as_deref().is_some_and(|i| i != "out_of_scope") => {
                say(&mut ws, &msg("I want to talk to a human")).await;
            }
            _ => {}
        }
        texts.push(text);
    }
    assert!(
        texts.len() >= 28,
        "{} questions can be labelled",
        texts.len()
    );
    let unlabelled = || async {
        cloud
            .get("/api/v1/samples?unlabelled=true&limit=1000")
            .await
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let missing = || async {
        let queue = unlabelled().await;
        texts
            .iter()
            .filter(|t| !queue.iter().any(|s| s["text"] == **t))
            .map(|t| t.to_string())
            .collect::<Vec<_>>()
    };
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    while !missing().await.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let left = missing().await;
    if with_encoder() && texts.len() - left.len() >= 28 {
        // The encoder variant measures learning; a line its base model
        // handled in a way that sent nothing up is reported, not fatal.
        eprintln!("not in the labelling queue (encoder variant): {left:?}");
        texts.retain(|t| !left.iter().any(|l| l == t));
    } else {
        assert!(left.is_empty(), "not in the labelling queue: {left:?}");
    }
    let queue = unlabelled().await;

    // A supervisor labels them (one per question) in the console.
    cloud
        .create_account("sup", "Sam", "supervisor", &["en", "zh"], 3)
        .await;
    let cookie = cloud.console_cookie("sup").await;
    let mut labelled = 0;
    for t in &texts {
        let s = queue.iter().find(|s| s["text"] == *t).unwrap();
        let path = format!("/console/api/samples/{}/label", s["id"].as_str().unwrap());
        let (st, _) = cloud
            .console_post(
                &cookie,
                &path,
                serde_json::json!({"label": format!("new:{NEW}")}),
            )
            .await;
        assert_eq!(st, 200, "{path}");
        labelled += 1;
    }
    assert_eq!(labelled, texts.len());
    // The supervisor writes the new intent's answer in both languages.
    let answers = cloud.console_get(&cookie, "/console/api/answers").await;
    assert_eq!(answers["unanswered"], serde_json::json!([NEW]), "{answers}");
    let (st, body) = cloud
        .console_call(
            reqwest::Method::PUT,
            &cookie,
            &format!("/console/api/answers/{NEW}"),
            serde_json::json!({"en": ANSWER_EN, "zh": ""}),
        )
        .await;
    assert_eq!(st, 400, "both languages are needed: {body}");
    let (st, body) = cloud
        .console_call(
            reqwest::Method::PUT,
            &cookie,
            &format!("/console/api/answers/{NEW}"),
            serde_json::json!({"en": ANSWER_EN, "zh": ANSWER_ZH}),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    let last_label = Instant::now();

    // The loop: train, gate, publish, then (approved) shadow and waves.
    let run = cloud.post("/api/v1/trainings", serde_json::json!({})).await;
    let id = run["id"].as_str().unwrap().to_owned();
    assert_eq!(run["state"], "running");
    assert_eq!(run["baseline"], released.id.as_str());
    assert_eq!(run["version"], "1.1.0");
    assert_eq!(
        (
            run["trained_labels"].as_u64(),
            run["held_out_labels"].as_u64()
        ),
        (Some(texts.len() as u64), Some(0))
    );
    // A second run while one runs is refused, by name.
    let again = cloud
        .http
        .post(cloud.url("/api/v1/trainings"))
        .bearer_auth(&cloud.ctl.admin_token)
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409);
    assert!(again.text().await.unwrap().contains(&id));

    let path = format!("/api/v1/trainings/{id}");
    eventually(1800, "the training run finished", || async {
        cloud.get(&path).await["state"] != "running"
    })
    .await;
    let done = cloud.get(&path).await;
    assert_eq!(done["state"], "awaiting_approval", "{done:#}");
    assert_eq!(
        done["report"]["regressions"],
        serde_json::json!([]),
        "{done:#}"
    );
    for lang in ["en", "zh"] {
        let b = done["report"]["validation"]["baseline"]["languages"][lang]["value"]
            .as_f64()
            .unwrap();
        let c = done["report"]["validation"]["candidate"]["languages"][lang]["value"]
            .as_f64()
            .unwrap();
        assert!(c >= b - 0.02, "{lang}: {b} -> {c}");
    }
    assert!(
        done["log_tail"].as_str().unwrap().contains("\"bundle\""),
        "{done:#}"
    );

    // Approved twice at once (a double click): one rollout, one refusal.
    let approve = || {
        cloud
            .http
            .post(cloud.url(&format!("/api/v1/trainings/{id}/approve")))
            .bearer_auth(&cloud.ctl.admin_token)
            // The shadow window opens before the nodes have loaded the
            // candidate; on a busy machine that took most of a 6 s window.
            .json(&serde_json::json!({"waves": ["1", "100%"], "bake_secs": 0,
                "shadow_secs": 30, "shadow_min_turns": 6}))
            .send()
    };
    let (a, b) = tokio::join!(approve(), approve());
    let (a, b) = (a.unwrap(), b.unwrap());
    let mut statuses = [a.status().as_u16(), b.status().as_u16()];
    statuses.sort();
    assert_eq!(statuses, [200, 409]);
    let approved: serde_json::Value = if a.status() == 200 { a } else { b }.json().await.unwrap();
    assert_eq!(approved["state"], "promoted");
    assert_eq!(
        cloud
            .get("/api/v1/rollouts")
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let rollout = approved["rollout_id"].as_str().unwrap().to_owned();
    let rpath = format!("/api/v1/rollouts/{rollout}");
    assert_eq!(cloud.get(&rpath).await["phase"], "shadow");
    // Live turns while the candidate shadows (it answers nobody).
    for id in NODES {
        eventually(
            30,
            &format!("{id} runs the candidate in shadow"),
            || async {
                cloud
                    .commands(id)
                    .await
                    .iter()
                    .any(|c| c["kind"] == "model_shadow" && c["ok"] == true)
            },
        )
        .await;
    }
    for node in &nodes {
        let mut ws = node.connect().await;
        start_session(&mut ws).await;
        for line in [
            "I lost my card",
            "my card has not arrived yet",
            "how do I top up my account",
        ] {
            say(&mut ws, &msg(line)).await;
        }
    }
    eventually(120, "the rollout ended", || async {
        let v = cloud.get(&rpath).await;
        v["phase"] == "succeeded" || v["phase"] == "aborted"
    })
    .await;
    let r = cloud.get(&rpath).await;
    assert_eq!(r["phase"], "succeeded", "{r:#}");
    eventually(30, "every node serves the new model", || async {
        nodes.iter().all(|n| n.model_version() == "1.1.0")
    })
    .await;
    let wall = last_label.elapsed();
    eprintln!(
        "learning loop: last label -> whole fleet serving 1.1.0 in {:.1} s",
        wall.as_secs_f64()
    );

    // Phrasings no one labelled, on every node's served model.
    for node in &nodes {
        let model = node.models().active.get();
        let right = unseen
            .iter()
            .filter(|(_, (t, _))| {
                let p = model.classify(t).unwrap();
                p.label == NEW && p.answered
            })
            .count();
        eprintln!(
            "{}: {right} of {} unseen phrasings recognised",
            node.url(""),
            unseen.len()
        );
        // Issue 13 asks for 90 %. With the encoder the candidate carries
        // the label memory (train_model.LabelMemory) and the variant
        // asserts the aim (17 of 18 measured with the fused heads and the
        // memory chosen on stand-in intents; docs/LEARNING.md). The
        // TF-IDF model, which the test command runs, learns a new intent
        // from 29 labels only about half the time: its bound says the
        // loop taught the fleet something (the base model answers none).
        if with_encoder() {
            assert!(
                right * 10 >= unseen.len() * 9,
                "{right} of {}",
                unseen.len()
            );
        } else {
            assert!(right >= 4, "{right} of {}", unseen.len());
        }
    }
    // And a visitor on a node gets the supervisor's answer now, in their
    // language (it came with the model: the node's knowledge base has none).
    // (A question the served model recognises.)
    let served = nodes[1].models().active.get();
    for (lang, answer) in [(Lang::En, ANSWER_EN), (Lang::Zh, ANSWER_ZH)] {
        let question = asked
            .iter()
            .map(|(_, (t, l))| (t, l))
            .find(|(t, l)| {
                **l == lang && {
                    let p = served.classify(t).unwrap();
                    p.label == NEW && p.answered
                }
            })
            .map(|(t, _)| t.as_str())
            .expect("the served model recognises some labelled question in each language");
        let mut ws = nodes[1].connect().await;
        send(&mut ws, &hello_in(lang)).await;
        recv(&mut ws).await;
        let (_, r) = say(&mut ws, &msg(question)).await;
        assert!(
            matches!(&r[0], edgedesk_common::chat::ServerFrame::Reply { intent: Some(i), text, .. } if i == NEW && text == answer),
            "{r:?}"
        );
    }
}

fn assert_bad_request(status: u16, body: &serde_json::Value, says: &str) {
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains(says), "{body}");
}

/// What an operator meets when a run cannot go ahead: each refusal says
/// why, and a failing trainer leaves a failed run with its last lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_that_cannot_go_ahead_say_why() {
    let cloud = Cloud::start_with(|c| {
        c.training.command = vec![
            "sh".into(),
            "-c".into(),
            "echo cannot read the base data >&2; echo \"args: $*\" >&2; exit 2".into(),
            "sh".into(),
        ];
        c.training.held_out_fraction = 0.0;
        c.training.encoder_dir = repo_root().join("build/models/e5");
    })
    .await;
    let post = |path: String, body: serde_json::Value| {
        let req = cloud
            .http
            .post(cloud.url(&path))
            .bearer_auth(&cloud.ctl.admin_token)
            .json(&body);
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<serde_json::Value>().await.unwrap())
        }
    };
    // Nothing published: nothing to compare a candidate with.
    let (st, body) = post("/api/v1/trainings".into(), serde_json::json!({})).await;
    assert_bad_request(st, &body, "no published model");
    let released = cloud.publish(&bundle_dir()).await;
    // No labels yet.
    let (st, body) = post("/api/v1/trainings".into(), serde_json::json!({})).await;
    assert_bad_request(st, &body, "no labelled samples");
    // A baseline that does not exist.
    let (st, body) = post(
        "/api/v1/trainings".into(),
        serde_json::json!({"baseline": "9.9.9"}),
    )
    .await;
    assert_eq!(st, 400);
    assert!(body["error"].as_str().unwrap().contains("9.9.9"), "{body}");
    // Approving a run that does not exist.
    let (st, _) = post(
        "/api/v1/trainings/tr-nope/approve".into(),
        serde_json::json!({}),
    )
    .await;
    assert_eq!(st, 404);

    // One labelled sample, then a trainer that fails.
    let dir = tempfile::tempdir().unwrap();
    let node = edge(&cloud, &dir, "harbour").await;
    cloud.wait_online("harbour", 15).await;
    let mut ws = node.connect().await;
    start_session(&mut ws).await;
    say(&mut ws, &msg("what is the weather like on mars")).await;
    eventually(15, "the sample arrives", || async {
        !cloud.get("/api/v1/samples?node=harbour").await[0].is_null()
    })
    .await;
    let sample = cloud.get("/api/v1/samples?node=harbour").await[0].clone();
    cloud
        .create_account("sup", "Sam", "supervisor", &["en"], 3)
        .await;
    let cookie = cloud.console_cookie("sup").await;
    let path = format!(
        "/console/api/samples/{}/label",
        sample["id"].as_str().unwrap()
    );
    let (st, _) = cloud
        .console_post(&cookie, &path, serde_json::json!({"label": "out_of_scope"}))
        .await;
    assert_eq!(st, 200);
    let (st, run) = post("/api/v1/trainings".into(), serde_json::json!({})).await;
    assert_eq!(st, 202, "{run}");
    assert_eq!(run["baseline"], released.id.as_str());
    let id = run["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/trainings/{id}");
    eventually(30, "the run failed", || async {
        cloud.get(&path).await["state"] == "failed"
    })
    .await;
    let done = cloud.get(&path).await;
    assert!(
        done["detail"].as_str().unwrap().contains("exit status: 2"),
        "{done}"
    );
    let tail = done["log_tail"].as_str().unwrap();
    assert!(
        tail.starts_with("cannot read the base data\nargs: --data"),
        "{tail}"
    );
    assert!(
        !tail.contains("--encoder"),
        "a linear baseline trains a linear candidate: {tail}"
    );
    // A failed run cannot be approved; a new one may start.
    let (st, body) = post(
        format!("/api/v1/trainings/{id}/approve"),
        serde_json::json!({}),
    )
    .await;
    assert_eq!(st, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("failed"), "{body}");
    let (st, again) = post("/api/v1/trainings".into(), serde_json::json!({})).await;
    assert_eq!(st, 202);
    let path = format!("/api/v1/trainings/{}", again["id"].as_str().unwrap());
    eventually(30, "the second run failed", || async {
        cloud.get(&path).await["state"] == "failed"
    })
    .await;

    // A fleet on the multilingual model (with the sentence encoder) gets a
    // candidate of the same kind: the trainer is told where the encoder is.
    let multilingual = cloud
        .publish(&repo_root().join("build/models/multilingual"))
        .await;
    let (st, run) = post(
        "/api/v1/trainings".into(),
        serde_json::json!({"baseline": multilingual.version}),
    )
    .await;
    assert_eq!(st, 202, "{run}");
    let path = format!("/api/v1/trainings/{}", run["id"].as_str().unwrap());
    eventually(30, "the encoder run failed", || async {
        cloud.get(&path).await["state"] == "failed"
    })
    .await;
    let done = cloud.get(&path).await;
    let tail = done["log_tail"].as_str().unwrap();
    assert!(
        tail.contains("--encoder ") && tail.ends_with("build/models/e5"),
        "{tail}"
    );
}

/// A controller killed with SIGKILL in the middle of a run takes its trainer
/// with it (the kernel kills the child when its parent dies), and the run it
/// left `running` reads as failed once the controller is back. Real
/// processes: the controller is `systest-cloud-controller`, the trainer a
/// shell that records its pid and then works until it is stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_killed_mid_run_leaves_no_trainer_behind() {
    use edgedesk_systest::process::*;
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_systest-cloud-controller"));
    let cdir = tempfile::tempdir().unwrap();
    let pidfile = cdir.path().join("trainer.pid");
    let command = serde_json::json!([
        "sh",
        "-c",
        // Waits for a signal; unlike `tail -f` it does not notice that its
        // output pipe has closed, as a trainer busy computing would not.
        "echo $$ > \"$0\"; exec python3 -c 'import signal; signal.pause()'",
        pidfile.to_string_lossy()
    ]);
    let (http, mqtt) = (free_port(), free_port());
    let mut ctl = CtlProcess::start(
        bin,
        cdir.path(),
        http,
        mqtt,
        &[
            ("EDGEDESK_CC_TRAINING__COMMAND", command.to_string()),
            ("EDGEDESK_CC_TRAINING__HELD_OUT_FRACTION", "0.0".into()),
        ],
    )
    .await;
    // A published model (the host's CLI, as an operator does) and one label.
    publish_with_cli(bin, cdir.path(), &bundle_dir(), &[]);
    ctl.create_agent("sup", "supervisor", 1).await;
    let edir = tempfile::tempdir().unwrap();
    let node = TestNode::start(ctl.node_config(&edir, "branch-t").await).await;
    eventually(15, "node online", || ctl.node_online("branch-t")).await;
    let mut ws = node.connect().await;
    start_session(&mut ws).await;
    say(&mut ws, &msg("what is the weather like on mars")).await;
    let samples = "/api/v1/samples?node=branch-t";
    eventually(15, "the sample arrives", || async {
        ctl.api(reqwest::Method::GET, samples, None)
            .await
            .is_some_and(|s| !s[0].is_null())
    })
    .await;
    let sample = ctl.api(reqwest::Method::GET, samples, None).await.unwrap()[0].clone();
    let cookie = console_login(&ctl.base(), &ctl.ca_pem, "sup").await;
    let (status, _) = console_call(
        &ctl.base(),
        &ctl.ca_pem,
        &cookie,
        reqwest::Method::POST,
        &format!(
            "/console/api/samples/{}/label",
            sample["id"].as_str().unwrap()
        ),
        serde_json::json!({"label": "out_of_scope"}),
    )
    .await;
    assert_eq!(status, 200);

    let run = ctl
        .api(
            reqwest::Method::POST,
            "/api/v1/trainings",
            Some(serde_json::json!({})),
        )
        .await
        .expect("the run starts");
    let id = run["id"].as_str().unwrap().to_owned();
    eventually(15, "the trainer is running", || async {
        std::fs::read_to_string(&pidfile).is_ok_and(|p| p.ends_with('\n'))
    })
    .await;
    let pid: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let alive = move || {
        // Gone, or a zombie waiting for whoever adopted it to reap it.
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            stat.rsplit(") ")
                .next()
                .is_some_and(|s| !s.starts_with('Z'))
        })
    };
    assert!(alive(), "the trainer {pid} runs");

    ctl.kill();
    eventually(10, "the trainer died with the controller", || async {
        !alive()
    })
    .await;
    ctl.restart().await;
    let after = ctl
        .api(
            reqwest::Method::GET,
            &format!("/api/v1/trainings/{id}"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(after["state"], "failed", "{after}");
    assert_eq!(after["detail"], "the controller stopped during the run");
    node.stop().await;
}

/// Suggested intents with real parts: visitors at a branch ask about
/// something no intent covers (safe deposit boxes, in English and Chinese,
/// and lottery tickets) among unrelated lines; the controller groups the
/// questions with the fleet model's own sentence encoder through the real
/// trainer script; a supervisor makes an intent of the deposit-box groups
/// (the answers in both languages ship with the next model) and dismisses
/// the lottery one; what was decided is not suggested again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn questions_nobody_understood_become_suggested_intents() {
    const DEPOSIT_EN: [&str; 5] = [
        "do you rent safe deposit boxes",
        "how much is a safe deposit box here",
        "I want to keep my valuables in a deposit box",
        "are there any safe deposit boxes free at the moment",
        "what size safe deposit boxes do you have",
    ];
    const DEPOSIT_ZH: [&str; 4] = [
        "租一个保险箱多少钱",
        "我想租个保管箱放贵重物品",
        "银行保险柜怎么租",
        "保险箱还有空的吗",
    ];
    const LOTTERY: [&str; 3] = [
        "can I buy lottery tickets here",
        "do you sell lottery tickets",
        "where can I get a lottery ticket",
    ];
    const UNRELATED: [&str; 3] = [
        "what is the weather like on mars tomorrow",
        "play some jazz music",
        "tell me a joke about cats",
    ];
    let multilingual = repo_root().join("build/models/multilingual");
    let script = repo_root().join("scripts/train_model.py");
    let cloud = Cloud::start_with(|c| {
        c.training.command = vec![python(), script.display().to_string()];
        c.training.data_dir = repo_root().join("data");
        c.training.suggest_every_secs = 0;
    })
    .await;
    cloud.publish(&multilingual).await;
    let dir = tempfile::tempdir().unwrap();
    let b = multilingual.clone();
    let _node = edge_with(&cloud, &dir, "harbour", move |c| {
        c.nlu.bundle = b;
        // This branch answers only what the bot is sure of. A deposit-box
        // question is close to `branch_services` ("what does this branch
        // offer"), and "where can I get a lottery ticket" to
        // `queue_ticket`: the shipped model has taken them so at 0.39-0.54
        // (docs/MODEL.md), just over its own threshold, and this test is
        // about what the fleet did not understand, not about where that
        // threshold falls.
        c.nlu.confidence_threshold = 0.6;
    })
    .await;
    cloud.wait_online("harbour", 20).await;
    let r = cloud
        .http
        .put(cloud.url("/api/v1/nodes/harbour/labels"))
        .bearer_auth(&cloud.ctl.admin_token)
        .json(&serde_json::json!({"labels": {"branch": "harbour-street"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    cloud
        .create_account("sup", "Sam", "supervisor", &["en", "zh"], 3)
        .await;
    cloud
        .create_account("agent", "Grace", "agent", &["en"], 3)
        .await;
    let sup = cloud.console_cookie("sup").await;
    // A supervisor asks for a grouping and waits for its result.
    let grouped = || async {
        let (st, _) = cloud
            .console_post(
                &sup,
                "/console/api/suggestions/refresh",
                serde_json::json!({}),
            )
            .await;
        assert_eq!(st, 200);
        eventually(120, "the grouping finishes", || async {
            cloud.get("/api/v1/suggestions").await["grouping"]["state"] != "running"
        })
        .await;
        let page = cloud.get("/api/v1/suggestions").await;
        assert_eq!(page["grouping"]["state"], "done", "{page:#}");
        page
    };

    // Nothing asked yet: nothing to group, and it says so.
    let page = grouped().await;
    assert!(
        page["grouping"]["detail"]
            .as_str()
            .unwrap()
            .contains("a suggestion needs at least 3"),
        "{page:#}"
    );

    // Each question in a session of its own (a line a flow took would be
    // an answer to the flow, not a question).
    let all: Vec<&str> = [&DEPOSIT_EN[..], &DEPOSIT_ZH, &LOTTERY, &UNRELATED].concat();
    for q in &all {
        let mut ws = _node.connect().await;
        start_session(&mut ws).await;
        say(&mut ws, &msg(q)).await;
    }
    eventually(20, "every question reaches the controller", || async {
        let samples = cloud.get("/api/v1/samples?limit=1000").await;
        all.iter()
            .all(|q| samples.as_array().unwrap().iter().any(|s| s["text"] == *q))
    })
    .await;

    // An agent does not decide what the model learns.
    let agent = cloud.console_cookie("agent").await;
    let r = cloud
        .http
        .get(cloud.url("/console/api/suggestions"))
        .header("cookie", &agent)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    let page = grouped().await;
    let open: Vec<serde_json::Value> = page["suggestions"].as_array().unwrap().clone();
    let texts = |s: &serde_json::Value| -> Vec<String> {
        s["examples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["text"].as_str().unwrap().to_owned())
            .collect()
    };
    let group_of = |set: &[&str]| {
        open.iter()
            .find(|s| texts(s).iter().all(|t| set.contains(&t.as_str())))
            .unwrap_or_else(|| panic!("no group of {set:?} in {page:#}"))
            .clone()
    };
    let (en, zh, lottery) = (
        group_of(&DEPOSIT_EN),
        group_of(&DEPOSIT_ZH),
        group_of(&LOTTERY),
    );
    for g in &open {
        assert!(g["size"].as_u64().unwrap() >= 3, "{g:#}");
        assert!(
            texts(g).iter().all(|t| !UNRELATED.contains(&t.as_str())),
            "an unrelated line was grouped: {g:#}"
        );
    }
    assert_eq!(en["branches"][0]["name"], "harbour-street", "{en:#}");
    assert_eq!(en["branches"][0]["count"], en["size"]);
    assert!(en["languages"]["zh"].is_null() && zh["languages"]["zh"] == zh["size"]);

    let accept = |id: &serde_json::Value, body: serde_json::Value| {
        let path = format!("/console/api/suggestions/{}/accept", id.as_str().unwrap());
        let sup = sup.clone();
        let cloud = &cloud;
        async move { cloud.console_post(&sup, &path, body).await }
    };
    // Bad input, each refused with its reason and nothing written.
    let (st, body) = accept(
        &en["id"],
        serde_json::json!({"intent": "new:safe_deposit_box"}),
    )
    .await;
    assert_eq!(st, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("English and Chinese"),
        "{body}"
    );
    let (st, body) = accept(
        &en["id"],
        serde_json::json!({"intent": "new:safe_deposit_box", "en": "We rent boxes.", "zh": " "}),
    )
    .await;
    assert_eq!(st, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("Chinese"),
        "{body}"
    );
    let (st, body) = accept(&en["id"], serde_json::json!({"intent": "Safe Deposit!"})).await;
    assert_eq!(st, 400, "{body}");
    let (st, _) = accept(
        &"sg-nope".into(),
        serde_json::json!({"intent": "card_arrival"}),
    )
    .await;
    assert_eq!(st, 404);
    let unlabelled = cloud
        .get("/api/v1/samples?unlabelled=true&limit=1000")
        .await;
    assert_eq!(
        unlabelled.as_array().unwrap().len(),
        all.len(),
        "nothing labelled yet"
    );

    // The English group becomes a new intent with its answers…
    let (st, done) = accept(
        &en["id"],
        serde_json::json!({"intent": "new:safe_deposit_box",
            "en": "We rent safe deposit boxes in three sizes; ask at the counter.",
            "zh": "本网点提供三种尺寸的保险箱租赁，请到柜台咨询。"}),
    )
    .await;
    assert_eq!(st, 200, "{done}");
    assert_eq!(done["labelled"], en["size"]);
    assert_eq!(done["suggestion"]["state"], "accepted");
    // …and the Chinese one joins it: the intent has its answers already.
    let (st, done) = accept(
        &zh["id"],
        serde_json::json!({"intent": "new:safe_deposit_box"}),
    )
    .await;
    assert_eq!(st, 200, "{done}");
    assert_eq!(done["labelled"], zh["size"]);
    let (st, body) = accept(&zh["id"], serde_json::json!({"intent": "card_arrival"})).await;
    assert_eq!(st, 409, "decided twice: {body}");
    let answers = cloud.console_get(&sup, "/console/api/answers").await;
    assert!(
        answers["answers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["intent"] == "safe_deposit_box"
                && a["zh"].as_str().unwrap().contains("保险箱")),
        "{answers}"
    );
    let samples = cloud.get("/api/v1/samples?limit=1000").await;
    let labelled = samples
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["label"] == "new:safe_deposit_box")
        .count() as u64;
    assert_eq!(
        labelled,
        en["size"].as_u64().unwrap() + zh["size"].as_u64().unwrap()
    );

    // The lottery questions are dismissed: not suggested again.
    let path = format!(
        "/console/api/suggestions/{}/dismiss",
        lottery["id"].as_str().unwrap()
    );
    let (st, _) = cloud.console_post(&sup, &path, serde_json::json!({})).await;
    assert_eq!(st, 200);
    let (st, _) = cloud.console_post(&sup, &path, serde_json::json!({})).await;
    assert_eq!(st, 409);
    let page = grouped().await;
    let states: Vec<&str> = page["suggestions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["state"].as_str().unwrap())
        .collect();
    assert!(!states.contains(&"open"), "{page:#}");
    assert_eq!(states.iter().filter(|s| **s == "accepted").count(), 2);
    assert_eq!(states.iter().filter(|s| **s == "dismissed").count(), 1);
}

/// Knowledge-base releases with real parts: a supervisor rewrites an
/// answer (with quick replies) in the console; the answers are released
/// without training as the fleet model's next patch version (signed,
/// published, the diff recorded), approved, rolled out, and a visitor at
/// the branch gets the new answer. Removing the edit and releasing again
/// brings the built-in answer back the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_edited_in_the_console_reach_the_fleet_as_a_signed_release() {
    use edgedesk_common::chat::ServerFrame;
    const NEW_EN: &str = "Cards arrive in 3 working days now; track yours in the app.";
    const NEW_ZH: &str = "新卡现在3个工作日内寄达，可在应用中查询进度。";
    const QUESTION: &str = "my new card still hasn't arrived";
    let cloud = Cloud::start_with(|c| c.models.tick_ms = 100).await;
    let base = cloud.publish(&bundle_dir()).await;
    let dir = tempfile::tempdir().unwrap();
    let node = edge(&cloud, &dir, "harbour").await;
    cloud.wait_online("harbour", 20).await;
    cloud
        .create_account("sup", "Sam", "supervisor", &["en", "zh"], 3)
        .await;
    let sup = cloud.console_cookie("sup").await;
    let ask = || async {
        let mut ws = node.connect().await;
        start_session(&mut ws).await;
        let (_, r) = say(&mut ws, &msg(QUESTION)).await;
        match &r[0] {
            ServerFrame::Reply {
                text,
                quick_replies,
                ..
            } => (
                text.clone(),
                quick_replies
                    .iter()
                    .map(|q| q.label.clone())
                    .collect::<Vec<_>>(),
            ),
            other => panic!("{other:?}"),
        }
    };
    let (before, _) = ask().await;
    assert!(before.contains("5 working days"), "{before}");

    // Nothing edited: nothing to release.
    let release = || cloud.console_post(&sup, "/console/api/kb/releases", serde_json::json!({}));
    let (st, body) = release().await;
    assert_bad_request(st, &body, "nothing to release");
    // Bad quick replies are refused by what is wrong.
    let put = |body: serde_json::Value| {
        cloud.console_call(
            reqwest::Method::PUT,
            &sup,
            "/console/api/answers/card_arrival",
            body,
        )
    };
    let (st, body) = put(serde_json::json!({"en": NEW_EN, "zh": NEW_ZH,
        "quick_replies": {"en": ["x".repeat(61)], "zh": []}}))
    .await;
    assert_bad_request(st, &body, "longer than 60 characters");
    let (st, body) = put(serde_json::json!({"en": NEW_EN, "zh": NEW_ZH,
        "quick_replies": {"en": ["a", "b", "c", "d", "e", "f", "g"], "zh": []}}))
    .await;
    assert_bad_request(st, &body, "at most 6 English quick replies");
    let (st, body) = put(serde_json::json!({"en": NEW_EN, "zh": NEW_ZH,
        "quick_replies": {"en": ["Track my card"], "zh": ["查询进度"]}}))
    .await;
    assert_eq!(st, 200, "{body}");

    let approve_and_roll = |id: String, version: &'static str| {
        let cloud = &cloud;
        let node = &node;
        async move {
            let approved = cloud
                .post(
                    &format!("/api/v1/trainings/{id}/approve"),
                    serde_json::json!({"waves": ["100%"], "bake_secs": 0}),
                )
                .await;
            assert_eq!(approved["state"], "promoted", "{approved}");
            let rpath = format!(
                "/api/v1/rollouts/{}",
                approved["rollout_id"].as_str().unwrap()
            );
            let mut last = serde_json::Value::Null;
            for _ in 0..600 {
                last = cloud.get(&rpath).await;
                if last["phase"] == "succeeded" {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            assert_eq!(last["phase"], "succeeded", "{last:#}");
            eventually(10, "the node serves the release", || async {
                node.model_version() == version
            })
            .await;
            // A release is made against what the branches report serving.
            eventually(
                10,
                "the controller sees the node on the release",
                || async { cloud.node("harbour").await["heartbeat"]["model_version"] == version },
            )
            .await;
        }
    };

    let (st, row) = release().await;
    assert_eq!(st, 200, "{row}");
    assert_eq!(row["kind"], "knowledge_base");
    assert_eq!(row["state"], "awaiting_approval");
    assert_eq!(
        (row["baseline_version"].as_str(), row["version"].as_str()),
        (Some("1.0.0"), Some("1.0.1"))
    );
    let changes = row["report"]["answers"].as_array().unwrap();
    assert_eq!(changes.len(), 1, "{row:#}");
    assert_eq!(changes[0]["intent"], "card_arrival");
    assert_eq!(changes[0]["change"], "added");
    assert_eq!(
        changes[0]["after"]["quick_zh"],
        serde_json::json!(["查询进度"])
    );
    // Signed and published like any model release.
    let published = cloud.get("/api/v1/models/1.0.1").await;
    assert_eq!(published["name"], base.name.as_str());
    // Released again with nothing changed since: refused.
    let (st, body) = release().await;
    assert_eq!(st, 409, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("1.0.1 (kb-"),
        "{body}"
    );
    approve_and_roll(row["id"].as_str().unwrap().to_owned(), "1.0.1").await;
    let (text, quick) = ask().await;
    assert_eq!(text, NEW_EN);
    assert_eq!(quick, ["Track my card"]);

    // The edit removed and released: the built-in answer comes back.
    let (st, _) = cloud
        .console_call(
            reqwest::Method::DELETE,
            &sup,
            "/console/api/answers/card_arrival",
            serde_json::json!({}),
        )
        .await;
    assert_eq!(st, 204);
    let (st, row) = release().await;
    assert_eq!(st, 200, "{row}");
    assert_eq!(row["version"], "1.0.2");
    assert_eq!(row["report"]["answers"][0]["change"], "removed");
    approve_and_roll(row["id"].as_str().unwrap().to_owned(), "1.0.2").await;
    let (text, _) = ask().await;
    assert_eq!(text, before);
}
