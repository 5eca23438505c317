//! The Kubernetes operator's reconcile against a FAKE Kubernetes API (kube's
//! `tower_test` mock: each request the operator makes is checked and
//! answered here), with a real controller behind it (store, rollouts). The
//! opt-in test against a real cluster is `real_cluster_round_trip` (ignored
//! unless run with `--run-ignored` and `KUBECONFIG`).

mod support;
use support::*;

use std::sync::Arc;

use cloud_controller::operator::{
    self, Context, ModelRollout, ModelRolloutSpec, ModelRolloutStatus,
};
use http::{Request, Response};
use kube::client::Body;
use tokio_util::sync::CancellationToken;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

fn fake_api(ctl: &cloud_controller::Controller) -> (Arc<Context>, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    (
        Arc::new(Context::new(
            client,
            ctl.rollouts.clone(),
            Some("test".into()),
        )),
        handle,
    )
}

fn rollout(model: &str, finalized: bool, status: Option<ModelRolloutStatus>) -> ModelRollout {
    let mut mr = ModelRollout::new(
        "r1",
        ModelRolloutSpec {
            model: model.into(),
            selector: [("kind".to_string(), "bank".to_string())].into(),
            waves: vec!["1".into(), "100%".into()],
            bake_secs: Some(0),
            failure_threshold: None,
            health_margin: None,
            offline_deadline_secs: None,
            shadow_secs: None,
            shadow_min_agreement: None,
            shadow_latency_margin: None,
            shadow_min_turns: None,
            paused: false,
            abort: false,
        },
    );
    mr.metadata.namespace = Some("default".into());
    mr.metadata.uid = Some("uid-r1".into());
    mr.metadata.generation = Some(1);
    mr.metadata.resource_version = Some("1".into());
    if finalized {
        mr.metadata.finalizers = Some(vec![operator::FINALIZER.into()]);
    }
    mr.status = status;
    mr
}

/// Take the operator's next request, check it, answer `reply` (JSON).
async fn expect(
    handle: &mut Handle,
    method: &str,
    path: &str,
    body_has: &[&str],
    reply: serde_json::Value,
) -> String {
    let (req, send) =
        tokio::time::timeout(std::time::Duration::from_secs(10), handle.next_request())
            .await
            .unwrap_or_else(|_| panic!("no {method} {path} request"))
            .expect("service open");
    assert_eq!(req.method().as_str(), method, "{}", req.uri());
    assert_eq!(req.uri().path(), path);
    let bytes = http_body_util::BodyExt::collect(req.into_body())
        .await
        .unwrap()
        .to_bytes();
    let body = String::from_utf8_lossy(&bytes).into_owned();
    for want in body_has {
        assert!(
            body.contains(want),
            "{method} {path}: {want:?} not in {body}"
        );
    }
    send.send_response(
        Response::builder()
            .status(if method == "POST" { 201 } else { 200 })
            .body(Body::from(serde_json::to_vec(&reply).unwrap()))
            .unwrap(),
    );
    body
}

const MR: &str = "/apis/edgedesk.io/v1alpha1/namespaces/default/modelrollouts/r1";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/default/events";

fn event_reply() -> serde_json::Value {
    serde_json::json!({ "apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": { "name": "e1", "namespace": "default" }, "eventTime": "2026-11-27T00:00:00.000000Z" })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_finalizer_comes_first() {
    let (ctl, token, _dir) = controller().await;
    let (ctx, mut handle) = fake_api(&ctl);
    let task = tokio::spawn(operator::reconcile(
        Arc::new(rollout("1.0.0", false, None)),
        ctx,
    ));
    let finalized = serde_json::to_value(rollout("1.0.0", true, None)).unwrap();
    expect(
        &mut handle,
        "PATCH",
        MR,
        &["edgedesk.io/rollout"],
        finalized,
    )
    .await;
    task.await.unwrap().expect("reconciled");
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unpublished_model_is_reported_invalid_with_a_warning_event() {
    let (ctl, token, _dir) = controller().await;
    let (ctx, mut handle) = fake_api(&ctl);
    let task = tokio::spawn(operator::reconcile(
        Arc::new(rollout("9.9.9", true, None)),
        ctx,
    ));
    let me = serde_json::to_value(rollout("9.9.9", true, None)).unwrap();
    expect(
        &mut handle,
        "PATCH",
        &format!("{MR}/status"),
        &["\"invalid\"", "9.9.9"],
        me,
    )
    .await;
    expect(
        &mut handle,
        "POST",
        EVENTS,
        &["Invalid", "Warning"],
        event_reply(),
    )
    .await;
    task.await.unwrap().expect("reconciled");
    token.cancel();
}

/// Publish the default bundle as the operator's `model publish` would.
async fn publish_default(ctl: &cloud_controller::Controller, data: &std::path::Path) {
    let bundle = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../build/models/default");
    let ort = std::env::var("ORT_DYLIB_PATH").expect("ORT_DYLIB_PATH (source build/env.sh)");
    let key = cloud_controller::models::signing_key(&data.join("model-signing.key")).unwrap();
    cloud_controller::models::publish(
        &ctl.store,
        &data.join("models"),
        &key,
        &bundle,
        std::path::Path::new(&ort),
        cloud_controller::downlink::now_ms(),
    )
    .await
    .expect("published");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_is_created_mirrored_to_status_and_aborted_on_delete() {
    let (ctl, token, dir) = controller().await;
    enrol(&ctl, "branch-1").await;
    publish_default(&ctl, dir.path()).await;

    // First reconcile with the finalizer: the rollout is created.
    let (ctx, mut handle) = fake_api(&ctl);
    let task = tokio::spawn(operator::reconcile(
        Arc::new(rollout("1.0.0", true, None)),
        ctx.clone(),
    ));
    expect(&mut handle, "POST", EVENTS, &["Created"], event_reply()).await;
    let body = expect(
        &mut handle,
        "PATCH",
        &format!("{MR}/status"),
        &["rolloutId", "\"rolling\"", "\"0/1\"", "\"1/2\""],
        serde_json::to_value(rollout("1.0.0", true, None)).unwrap(),
    )
    .await;
    task.await.unwrap().expect("reconciled");
    let patch: serde_json::Value = serde_json::from_str(&body).unwrap();
    let status: ModelRolloutStatus = serde_json::from_value(patch["status"].clone()).unwrap();
    let id = status.rollout_id.clone().unwrap();
    let stored = ctl
        .rollouts
        .get(&id)
        .await
        .unwrap()
        .expect("the rollout exists in the controller's store");
    assert_eq!((stored.phase.as_str(), stored.total), ("rolling", 1));

    // Deleted while running: the finalizer aborts it, then lets go.
    let mut gone = rollout("1.0.0", true, Some(status));
    gone.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::now(),
    ));
    let task = tokio::spawn(operator::reconcile(Arc::new(gone.clone()), ctx));
    expect(&mut handle, "POST", EVENTS, &["Aborted"], event_reply()).await;
    let mut released = serde_json::to_value(&gone).unwrap();
    released["metadata"]["finalizers"] = serde_json::json!([]);
    expect(&mut handle, "PATCH", MR, &["finalizers"], released).await;
    task.await.unwrap().expect("reconciled");
    let after = ctl.rollouts.get(&id).await.unwrap().unwrap();
    assert_eq!(after.phase, "aborted");
    token.cancel();
}

/// A ModelRollout whose rollout this controller's store does not know (a
/// replica with its own store): reported once as `unknown` with a Degraded
/// condition and a Warning, no retry loop; deleting it keeps the finalizer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_unknown_to_this_store_is_reported_not_looped_on_nor_unfinalized() {
    let (ctl, token, _dir) = controller().await;
    let (ctx, mut handle) = fake_api(&ctl);
    let status = ModelRolloutStatus {
        rollout_id: Some("ro-elsewhere".into()),
        phase: "rolling".into(),
        ..Default::default()
    };
    let mr = rollout("1.0.0", true, Some(status));
    let task = tokio::spawn(operator::reconcile(Arc::new(mr.clone()), ctx.clone()));
    expect(
        &mut handle,
        "PATCH",
        &format!("{MR}/status"),
        &[
            "\"phase\":\"unknown\"",
            "not in this controller's store",
            "\"reason\":\"Unknown\",\"status\":\"True\",\"type\":\"Degraded\"",
        ],
        serde_json::to_value(&mr).unwrap(),
    )
    .await;
    expect(
        &mut handle,
        "POST",
        EVENTS,
        &["UnknownRollout"],
        event_reply(),
    )
    .await;
    let action = task.await.unwrap().expect("reconciled");
    assert_eq!(
        action,
        kube::runtime::controller::Action::await_change(),
        "no retry loop"
    );

    let mut gone = mr;
    gone.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::now(),
    ));
    let task = tokio::spawn(operator::reconcile(Arc::new(gone), ctx));
    expect(
        &mut handle,
        "POST",
        EVENTS,
        &["UnknownRollout", "not removing the finalizer"],
        event_reply(),
    )
    .await;
    assert!(task.await.unwrap().is_err(), "the finalizer stays");
    assert!(
        !matches!(
            tokio::time::timeout(std::time::Duration::from_millis(300), handle.next_request())
                .await,
            Ok(Some(_))
        ),
        "the finalizer was not removed"
    );
    token.cancel();
}

#[test]
fn crds_are_generated_and_the_chart_copy_matches() {
    let yaml = cloud_controller::operator::crd::crd_yaml();
    for want in [
        "modelrollouts.edgedesk.io",
        "edgenodes.edgedesk.io",
        "modeltrainings.edgedesk.io",
        "jsonPath: .status.baselineVersion",
        "subresources:",
        "status: {}",
        "jsonPath: .status.phase",
        "jsonPath: .status.progress",
        "jsonPath: .status.modelVersion",
    ] {
        assert!(yaml.contains(want), "{want} missing from the CRDs");
    }
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../charts/edgedesk/crds/crds.yaml"
    );
    let chart = std::fs::read_to_string(path).expect("the chart has its CRDs");
    assert!(
        chart == yaml,
        "charts/edgedesk/crds/crds.yaml differs from `cloud-controller crd`; regenerate it:\n  cargo run -p cloud-controller --bin cloud-controller -- crd > charts/edgedesk/crds/crds.yaml"
    );
}

/// The registry is mirrored as EdgeNodes with Ready and Degraded
/// conditions; an EdgeNode's `spec.branch` is checked, kept and queued for
/// its node like a REST call (`status.branch` says "pending"), a broken one
/// is reported "invalid" (Degraded) and changes nothing; an EdgeNode whose
/// node this controller does not know is never deleted (a replica with
/// another store once deleted them all).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_is_mirrored_as_edge_nodes() {
    let (ctl, token, _dir) = controller().await;
    enrol(&ctl, "branch-1").await;
    enrol(&ctl, "branch-2").await;
    let (ctx, mut handle) = fake_api(&ctl);
    let client = ctx.client.clone();
    let rollouts = ctl.rollouts.clone();
    let task =
        tokio::spawn(async move { operator::mirror_nodes(&client, "default", &rollouts).await });
    const EN: &str = "/apis/edgedesk.io/v1alpha1/namespaces/default/edgenodes";
    let object = |name: &str, branch: serde_json::Value| {
        serde_json::json!({ "apiVersion": "edgedesk.io/v1alpha1", "kind": "EdgeNode",
        "metadata": { "name": name, "namespace": "default" },
        "spec": { "nodeId": name, "labels": { "kind": "bank" }, "branch": branch } })
    };
    let good = object(
        "branch-1",
        serde_json::json!({ "hours": { "sat": "10:00-13:00" },
            "facts": { "address": { "en": "1 Quay St", "zh": "码头街1号" } } }),
    );
    let bad = object(
        "branch-2",
        serde_json::json!({ "hours": { "mon": "17:00-09:00" } }),
    );
    // An EdgeNode this controller's registry does not know.
    let stale = serde_json::json!({ "apiVersion": "edgedesk.io/v1alpha1", "kind": "EdgeNode",
        "metadata": { "name": "gone-7", "namespace": "default" },
        "spec": { "nodeId": "gone-7", "labels": {} } });
    expect(
        &mut handle,
        "GET",
        EN,
        &[],
        serde_json::json!({ "apiVersion": "edgedesk.io/v1alpha1",
        "kind": "EdgeNodeList", "metadata": {}, "items": [good, bad, stale.clone()] }),
    )
    .await;
    let spec = expect(
        &mut handle,
        "PATCH",
        &format!("{EN}/branch-1"),
        &["\"nodeId\":\"branch-1\""],
        good.clone(),
    )
    .await;
    assert!(
        !spec.contains("branch\":{"),
        "the mirror never writes spec.branch: {spec}"
    );
    expect(
        &mut handle,
        "PATCH",
        &format!("{EN}/branch-1/status"),
        &[
            "\"online\":false",
            "\"revoked\":false",
            "\"branch\":\"pending\"",
            "\"reason\":\"Offline\",\"status\":\"False\",\"type\":\"Ready\"",
            "\"reason\":\"AsExpected\",\"status\":\"False\",\"type\":\"Degraded\"",
        ],
        good,
    )
    .await;
    expect(
        &mut handle,
        "PATCH",
        &format!("{EN}/branch-2"),
        &[],
        bad.clone(),
    )
    .await;
    expect(
        &mut handle,
        "PATCH",
        &format!("{EN}/branch-2/status"),
        &[
            "\"branch\":\"invalid: branch.hours.mon",
            "\"reason\":\"BranchInvalid\",\"status\":\"True\",\"type\":\"Degraded\"",
        ],
        bad,
    )
    .await;
    task.await.unwrap().expect("mirrored");
    drop(stale);
    assert!(
        !matches!(
            tokio::time::timeout(std::time::Duration::from_millis(300), handle.next_request())
                .await,
            Ok(Some(_))
        ),
        "no further request: the unknown EdgeNode is not deleted"
    );
    let kept = ctl.store.branch("branch-1").await.unwrap().expect("kept");
    assert_eq!(kept.updated_by, "kubernetes");
    assert_eq!(kept.info.facts["address"].zh, "码头街1号");
    let queued = ctl.store.commands("branch-1", 10).await.unwrap();
    assert!(
        queued
            .iter()
            .any(|c| c.command.id == kept.command_id && c.command.body.kind() == "set_branch"),
        "{queued:?}"
    );
    assert!(ctl.store.branch("branch-2").await.unwrap().is_none());
    token.cancel();
}

#[test]
fn node_ids_become_kubernetes_names_or_are_skipped() {
    assert_eq!(
        operator::object_name("Branch_7").as_deref(),
        Some("branch-7")
    );
    assert_eq!(operator::object_name("-x"), None);
    assert_eq!(operator::object_name(""), None);
}

/// Opt-in, against a REAL cluster (ignored by default, so never counted as
/// a pass here): with `KUBECONFIG` set and the chart's CRDs installed, run
/// `cargo nextest run -p cloud-controller --run-ignored only real_cluster`.
/// It creates a ModelRollout for an unpublished model and waits for the
/// operator to report it invalid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real Kubernetes cluster: set KUBECONFIG and run with --run-ignored"]
async fn real_cluster_round_trip() {
    assert!(
        std::env::var_os("KUBECONFIG").is_some(),
        "set KUBECONFIG to run the real-cluster test"
    );
    use kube::api::{Api, DeleteParams, PostParams};
    let (ctl, token, _dir) = controller().await;
    let client = kube::Client::try_default()
        .await
        .expect("cluster reachable");
    let ns = client.default_namespace().to_owned();
    let api: Api<ModelRollout> = Api::namespaced(client.clone(), &ns);
    let mut mr = rollout("0.0.0-not-published", false, None);
    mr.metadata.namespace = Some(ns.clone());
    mr.metadata.name = Some(format!("edgedesk-test-{}", std::process::id()));
    mr.metadata.uid = None;
    mr.metadata.resource_version = None;
    let created = api
        .create(&PostParams::default(), &mr)
        .await
        .expect("CRDs installed");
    let name = created.metadata.name.clone().unwrap();
    // A Lease of its own: the test works while a real controller holds the
    // chart's Lease in the same namespace.
    let mut kcfg = cloud_controller::config::Config::default().kubernetes;
    kcfg.lease_name = format!("edgedesk-test-lease-{}", std::process::id());
    let lease_name = kcfg.lease_name.clone();
    let run = tokio::spawn(operator::run(
        client.clone(),
        kcfg,
        ctl.rollouts.clone(),
        ctl.trainings.clone(),
        token.clone(),
    ));
    // And a ModelTraining: nothing is published, so its run cannot start.
    let trainings: Api<operator::ModelTraining> = Api::namespaced(client.clone(), &ns);
    let mut mt = model_training(&format!("edgedesk-test-{}", std::process::id()));
    mt.metadata.namespace = Some(ns.clone());
    mt.metadata.uid = None;
    mt.metadata.generation = None;
    trainings
        .create(&PostParams::default(), &mt)
        .await
        .expect("the ModelTraining CRD is installed");
    let mut phase = String::new();
    for _ in 0..60 {
        let got = api.get(&name).await.unwrap();
        phase = got.status.map(|s| s.phase).unwrap_or_default();
        if phase == "invalid" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
    // Clean up: the object (its finalizer is removed by the running
    // operator, so wait until it is gone), then the test's Lease.
    let _ = api.delete(&name, &DeleteParams::default()).await;
    for _ in 0..30 {
        if api.get_opt(&name).await.ok().flatten().is_none() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
    let gone = api.get_opt(&name).await.ok().flatten().is_none();
    let mut training_state = String::new();
    for _ in 0..30 {
        let got = trainings.get(&name).await.unwrap();
        training_state = got.status.map(|s| s.state).unwrap_or_default();
        if training_state == "failed" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
    let _ = trainings.delete(&name, &DeleteParams::default()).await;
    token.cancel();
    let _ = run.await;
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(client, &ns);
    let _ = leases.delete(&lease_name, &DeleteParams::default()).await;
    assert_eq!(phase, "invalid");
    assert_eq!(
        training_state, "failed",
        "the ModelTraining says it could not start"
    );
    assert!(
        gone,
        "the test's ModelRollout was deleted (finalizer removed)"
    );
}

/// Not the operator, but the same store: a controller restarted in the middle
/// of a rollout carries on from the state it left in the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_controller_resumes_a_rollout() {
    let dir = tempfile::tempdir().unwrap();
    let config = || {
        let mut c = config(dir.path());
        c.models.tick_ms = 100;
        c
    };
    let first_token = CancellationToken::new();
    let first = cloud_controller::run(config(), first_token.clone())
        .await
        .unwrap();
    enrol(&first, "branch-1").await;
    enrol(&first, "branch-2").await;
    publish_default(&first, dir.path()).await;
    // Both nodes are offline: each wave waits 2 s for its node, then skips it.
    let req: cloud_controller::rollouts::CreateRollout =
        serde_json::from_value(serde_json::json!({
            "model": "1.0.0", "waves": ["1", "100%"], "bake_secs": 0, "offline_deadline_secs": 2
        }))
        .unwrap();
    let created = first.rollouts.create(req).await.unwrap();
    assert_eq!((created.phase.as_str(), created.wave), ("rolling", 1));
    first_token.cancel();
    first.wait().await.unwrap();

    let second_token = CancellationToken::new();
    let second = cloud_controller::run(config(), second_token.clone())
        .await
        .unwrap();
    let id = created.id.clone();
    let mut last = None;
    for _ in 0..100 {
        let v = second.rollouts.get(&id).await.unwrap().unwrap();
        if v.phase == "succeeded" {
            last = Some(v);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let v = last.expect("the restarted controller finished the rollout");
    assert_eq!((v.skipped, v.updated, v.total), (2, 0, 2), "{v:?}");
    second_token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_is_taken_held_and_yielded() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let leader = Arc::new(AtomicBool::new(false));
    let stop = CancellationToken::new();
    let task = tokio::spawn(operator::lease::run(
        client,
        "default".into(),
        "edgedesk-leader".into(),
        "replica-a".into(),
        std::time::Duration::from_secs(3),
        leader.clone(),
        stop.clone(),
    ));
    const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/default/leases";
    // No Lease yet: it is created with us as the holder.
    let (req, send) = handle.next_request().await.unwrap();
    assert_eq!(
        (req.method().as_str(), req.uri().path()),
        ("GET", &*format!("{LEASE}/edgedesk-leader"))
    );
    send.send_response(
        Response::builder()
            .status(404)
            .body(Body::from(
                serde_json::to_vec(&serde_json::json!({ "kind": "Status", "apiVersion": "v1",
                    "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found" }))
                .unwrap(),
            ))
            .unwrap(),
    );
    let lease = |holder: &str, renewed: &str| {
        serde_json::json!({ "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": { "name": "edgedesk-leader", "namespace": "default", "resourceVersion": "7" },
            "spec": { "holderIdentity": holder, "leaseDurationSeconds": 3, "renewTime": renewed } })
    };
    let now = || chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    expect(
        &mut handle,
        "POST",
        LEASE,
        &["replica-a"],
        lease("replica-a", &now()),
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(
        leader.load(Ordering::SeqCst),
        "holder after creating the Lease"
    );
    // Someone else renewed it meanwhile (we lost a race): follow.
    expect(
        &mut handle,
        "GET",
        &format!("{LEASE}/edgedesk-leader"),
        &[],
        lease("replica-b", &now()),
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(
        !leader.load(Ordering::SeqCst),
        "a live Lease of another replica is respected"
    );
    // Its holder stopped renewing: we take it over (a replace with the resourceVersion).
    let stale = (chrono::Utc::now() - chrono::Duration::seconds(60))
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    expect(
        &mut handle,
        "GET",
        &format!("{LEASE}/edgedesk-leader"),
        &[],
        lease("replica-b", &stale),
    )
    .await;
    expect(
        &mut handle,
        "PUT",
        &format!("{LEASE}/edgedesk-leader"),
        &["replica-a", "\"resourceVersion\":\"7\""],
        lease("replica-a", &now()),
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(
        leader.load(Ordering::SeqCst),
        "an expired Lease is taken over"
    );
    stop.cancel();
    // On shutdown the holder hands the Lease back: holder cleared.
    expect(
        &mut handle,
        "GET",
        &format!("{LEASE}/edgedesk-leader"),
        &[],
        lease("replica-a", &now()),
    )
    .await;
    expect(
        &mut handle,
        "PUT",
        &format!("{LEASE}/edgedesk-leader"),
        &["\"holderIdentity\":\"\""],
        lease("", &now()),
    )
    .await;
    task.await.unwrap();
    assert!(
        !leader.load(Ordering::SeqCst),
        "leadership ends with the process"
    );
}

// ---------- ModelTraining and the trainer as a Job (FAKE API as above)

const JOBS: &str = "/apis/batch/v1/namespaces/default/jobs";
const PODS: &str = "/api/v1/namespaces/default/pods";

/// Take the next request; returns (method, path, body) and answers `reply`
/// (raw bytes, status `code`).
async fn answer(handle: &mut Handle, code: u16, reply: Vec<u8>) -> (String, String, String) {
    let (req, send) =
        tokio::time::timeout(std::time::Duration::from_secs(10), handle.next_request())
            .await
            .expect("a request")
            .expect("service open");
    let (method, path) = (req.method().to_string(), req.uri().path().to_owned());
    let bytes = http_body_util::BodyExt::collect(req.into_body())
        .await
        .unwrap()
        .to_bytes();
    send.send_response(
        Response::builder()
            .status(code)
            .body(Body::from(reply))
            .unwrap(),
    );
    (method, path, String::from_utf8_lossy(&bytes).into_owned())
}

fn json(v: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&v).unwrap()
}

fn job_runner(client: kube::Client) -> operator::job::JobRunner {
    operator::job::JobRunner {
        client,
        namespace: "default".into(),
        config: cloud_controller::config::TrainingJobConfig {
            image: "registry.example/edgedesk-trainer:1".into(),
            command: vec![],
            data_claim: "edgedesk-data".into(),
            pod_labels: [("app.kubernetes.io/name".to_string(), "edgedesk".to_string())].into(),
            cpu: "2".into(),
            memory: "8Gi".into(),
            service_account: String::new(),
            poll_ms: 10,
        },
        data_dir: "/var/lib/edgedesk".into(),
    }
}

fn trainer_spec() -> cloud_controller::training::trainer::Spec {
    cloud_controller::training::trainer::Spec {
        command: vec![
            "python3".into(),
            "/opt/edgedesk/scripts/train_model.py".into(),
        ],
        timeout: std::time::Duration::from_secs(3600),
        memory_mb: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trainer_job_is_created_followed_to_success_and_its_log_kept() {
    use cloud_controller::training::trainer::Runner;
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let runner = job_runner(kube::Client::new(service, "default"));
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("tr-0123456789ab");
    std::fs::create_dir_all(&run_dir).unwrap();
    let task = {
        let run_dir = run_dir.clone();
        tokio::spawn(async move {
            let args = vec![
                "--out".into(),
                "/var/lib/edgedesk/trainings/tr-0123456789ab/bundle".into(),
            ];
            runner
                .run(&trainer_spec(), &args, &run_dir, &CancellationToken::new())
                .await
        })
    };
    let (method, path, body) = answer(&mut handle, 201, b"{}".to_vec()).await;
    assert_eq!((method.as_str(), path.as_str()), ("POST", JOBS));
    let job: serde_json::Value = serde_json::from_str(&body).unwrap();
    let name = job["metadata"]["name"].as_str().unwrap().to_owned();
    assert!(name.starts_with("edgedesk-tr-0123456789ab-"), "{name}");
    for want in [
        "registry.example/edgedesk-trainer:1",
        "edgedesk-data",
        "train_model.py",
        "--out",
    ] {
        assert!(body.contains(want), "{want} not in {body}");
    }
    // Running, then done.
    for status in [
        serde_json::json!({"active": 1}),
        serde_json::json!({"succeeded": 1}),
    ] {
        let (method, path, _) = answer(
            &mut handle,
            200,
            json(serde_json::json!({"apiVersion": "batch/v1", "kind": "Job",
                "metadata": {"name": name}, "status": status})),
        )
        .await;
        assert_eq!((method.as_str(), path), ("GET", format!("{JOBS}/{name}")));
    }
    let (method, path, _) = answer(
        &mut handle,
        200,
        json(
            serde_json::json!({"apiVersion": "v1", "kind": "PodList", "metadata": {},
            "items": [{"metadata": {"name": "trainer-pod"}}]}),
        ),
    )
    .await;
    assert_eq!((method.as_str(), path.as_str()), ("GET", PODS));
    let (_, path, _) = answer(&mut handle, 200, b"epoch 1\nbundle written\n".to_vec()).await;
    assert_eq!(path, format!("{PODS}/trainer-pod/log"));
    let (tail, result) = task.await.unwrap();
    result.unwrap();
    assert_eq!(tail, "epoch 1\nbundle written");
    let log = std::fs::read_to_string(run_dir.join("trainer.log")).unwrap();
    assert!(log.contains("bundle written"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_trainer_job_says_why_and_shutdown_deletes_a_running_one() {
    use cloud_controller::training::trainer::{Runner, TrainerError};
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let runner = Arc::new(job_runner(kube::Client::new(service, "default")));
    let dir = tempfile::tempdir().unwrap();
    let go = |cancel: CancellationToken| {
        let (runner, dir) = (runner.clone(), dir.path().to_owned());
        tokio::spawn(async move { runner.run(&trainer_spec(), &[], &dir, &cancel).await })
    };
    // The Job's deadline passed: failed, with Kubernetes' reason.
    let task = go(CancellationToken::new());
    let (_, _, body) = answer(&mut handle, 201, b"{}".to_vec()).await;
    let name = serde_json::from_str::<serde_json::Value>(&body).unwrap()["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    answer(
        &mut handle,
        200,
        json(serde_json::json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
            "status": {"failed": 1, "conditions": [{"type": "Failed", "status": "True",
                "reason": "DeadlineExceeded", "message": "Job was active longer than specified deadline"}]}})),
    )
    .await;
    answer(
        &mut handle,
        200,
        json(
            serde_json::json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": []}),
        ),
    )
    .await;
    let (_, result) = task.await.unwrap();
    let e = result.unwrap_err().to_string();
    assert!(e.contains("DeadlineExceeded"), "{e}");

    // The controller shuts down mid-run: the Job is deleted.
    let cancel = CancellationToken::new();
    let task = go(cancel.clone());
    let (_, _, body) = answer(&mut handle, 201, b"{}".to_vec()).await;
    let name = serde_json::from_str::<serde_json::Value>(&body).unwrap()["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    cancel.cancel();
    // A poll may already be on its way: answer it as running.
    let mut deleted = false;
    for _ in 0..3 {
        let (method, path, _) = answer(
            &mut handle,
            200,
            json(serde_json::json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
                "status": {"active": 1}})),
        )
        .await;
        assert_eq!(path, format!("{JOBS}/{name}"));
        if method == "DELETE" {
            deleted = true;
            break;
        }
    }
    assert!(deleted, "the running Job was deleted");
    let (_, result) = task.await.unwrap();
    assert!(matches!(result, Err(TrainerError::Cancelled)), "{result:?}");
}

fn model_training(name: &str) -> operator::ModelTraining {
    let mut mt = operator::ModelTraining::new(
        name,
        operator::ModelTrainingSpec {
            baseline: None,
            approve: false,
            rollout: None,
        },
    );
    mt.metadata.namespace = Some("default".into());
    mt.metadata.uid = Some(format!("uid-{name}"));
    mt.metadata.generation = Some(1);
    mt
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_training_that_cannot_start_says_why_in_its_status_and_an_event() {
    let (ctl, token, _dir) = controller().await;
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let ctx = Arc::new(operator::training::TrainingContext::new(
        kube::Client::new(service, "default"),
        ctl.trainings.clone(),
        Some("test".into()),
    ));
    let task = tokio::spawn(operator::training::reconcile(
        Arc::new(model_training("t1")),
        ctx,
    ));
    // Nothing is published: there is no model to compare a candidate with.
    let (method, path, body) = answer(&mut handle, 201, json(event_reply())).await;
    assert_eq!((method.as_str(), path.as_str()), ("POST", EVENTS));
    assert!(
        body.contains("\"Failed\"") && body.contains("Warning"),
        "{body}"
    );
    let (method, path, body) = answer(
        &mut handle,
        200,
        json(serde_json::to_value(model_training("t1")).unwrap()),
    )
    .await;
    assert_eq!(
        (method.as_str(), path.as_str()),
        (
            "PATCH",
            "/apis/edgedesk.io/v1alpha1/namespaces/default/modeltrainings/t1/status"
        )
    );
    let patch: serde_json::Value = serde_json::from_str(&body).unwrap();
    let status: operator::ModelTrainingStatus =
        serde_json::from_value(patch["status"].clone()).unwrap();
    assert_eq!(status.state, "failed");
    assert!(
        status.message.contains("no published model"),
        "{}",
        status.message
    );
    assert!(
        status
            .conditions
            .iter()
            .any(|c| c.type_ == "Degraded" && c.status == "True" && c.reason == "Failed")
    );
    task.await.unwrap().unwrap();
    token.cancel();
}
