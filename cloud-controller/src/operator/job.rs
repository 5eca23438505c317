//! The trainer as a Kubernetes Job (`kubernetes.training_job.image` set):
//! the run's files are on the controller's data volume, which the Job
//! mounts at the same path, so the trainer's arguments are the same as for
//! a child process. The Job's pod is scheduled on the controller's node
//! (pod affinity on the controller pod's labels: the claim may be
//! ReadWriteOnce), has the configured requests and limits, no retries, and
//! `activeDeadlineSeconds` from `training.timeout_secs`. The runner polls
//! the Job until it succeeds or fails, keeps the pod's last log lines in
//! the run's `trainer.log`, and deletes the Job when the controller shuts
//! down mid-run (the run is then failed, as with a child process).

use std::ffi::OsString;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, LogParams, PostParams};
use tokio_util::sync::CancellationToken;

use crate::config::TrainingJobConfig;
use crate::training::trainer::{Outcome, Runner, Spec, TAIL_LINES, TrainerError};

/// Runs trainers as Jobs in `namespace`.
pub struct JobRunner {
    pub client: Client,
    pub namespace: String,
    pub config: TrainingJobConfig,
    /// Where the data volume is mounted (the controller's `store.data_dir`).
    pub data_dir: PathBuf,
}

/// A Job name for the run in `dir` (`edgedesk-tr-…-1a2b3c`): lowercase,
/// at most 63 characters, unique per attempt.
pub fn job_name(dir: &Path) -> String {
    let base: String = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(40)
        .collect();
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..6];
    format!("edgedesk-{}-{suffix}", base.trim_matches('-'))
}

/// The Job for `command` + `args` (pure: tested as it is sent).
pub fn job_spec(
    name: &str,
    run: &str,
    config: &TrainingJobConfig,
    data_dir: &Path,
    command: &[String],
    args: &[OsString],
    timeout: Duration,
) -> Job {
    let mut argv: Vec<String> = command.to_vec();
    argv.extend(args.iter().map(|a| a.to_string_lossy().into_owned()));
    let resources = serde_json::json!({"cpu": config.cpu, "memory": config.memory});
    let mut pod = serde_json::json!({
        "restartPolicy": "Never",
        "securityContext": {"runAsNonRoot": true},
        "containers": [{
            "name": "trainer",
            "image": config.image,
            "command": argv,
            "resources": {"requests": resources, "limits": resources},
            "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": false},
            "volumeMounts": [{"name": "data", "mountPath": data_dir.to_string_lossy()}],
        }],
        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": config.data_claim}}],
    });
    if !config.pod_labels.is_empty() {
        pod["affinity"] = serde_json::json!({"podAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [{
                "labelSelector": {"matchLabels": config.pod_labels},
                "topologyKey": "kubernetes.io/hostname",
            }],
        }});
    }
    if !config.service_account.is_empty() {
        pod["serviceAccountName"] = config.service_account.clone().into();
    }
    let labels = serde_json::json!({
        "app.kubernetes.io/managed-by": "edgedesk-controller",
        "app.kubernetes.io/component": "trainer",
        "edgedesk.io/run": run,
    });
    serde_json::from_value(serde_json::json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": timeout.as_secs().max(1),
            "ttlSecondsAfterFinished": 86_400,
            "template": {"metadata": {"labels": labels}, "spec": pod},
        },
    }))
    .expect("a Job from its JSON")
}

/// How a Job stands: `None` while it runs.
fn finished(job: &Job) -> Option<Result<(), TrainerError>> {
    let status = job.status.as_ref()?;
    if status.succeeded.unwrap_or(0) > 0 {
        return Some(Ok(()));
    }
    let failed = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Failed" && c.status == "True");
    if let Some(c) = failed {
        let why = c.reason.clone().unwrap_or_default();
        let message = c.message.clone().unwrap_or_default();
        return Some(Err(TrainerError::Exit {
            status: format!("Job failed: {why} {message}").trim().to_owned(),
        }));
    }
    if status.failed.unwrap_or(0) > 0 {
        return Some(Err(TrainerError::Exit {
            status: "Job failed".into(),
        }));
    }
    None
}

impl JobRunner {
    async fn run_job(
        &self,
        spec: &Spec,
        args: &[OsString],
        dir: &Path,
        cancel: &CancellationToken,
    ) -> Outcome {
        let jobs: Api<Job> = Api::namespaced(self.client.clone(), &self.namespace);
        let name = job_name(dir);
        let run = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let command = if self.config.command.is_empty() {
            &spec.command
        } else {
            &self.config.command
        };
        let job = job_spec(
            &name,
            &run,
            &self.config,
            &self.data_dir,
            command,
            args,
            spec.timeout,
        );
        if let Err(e) = jobs.create(&PostParams::default(), &job).await {
            return (
                String::new(),
                Err(TrainerError::Job(format!("creating {name}: {e}"))),
            );
        }
        tracing::info!(job = %name, run = %run, "trainer Job created");
        // Our own deadline a minute after the Job's, should it not report.
        let deadline = tokio::time::sleep(spec.timeout + Duration::from_secs(60));
        tokio::pin!(deadline);
        let poll = Duration::from_millis(self.config.poll_ms.max(10));
        let result = loop {
            tokio::select! {
                _ = cancel.cancelled() => {
                    self.delete(&jobs, &name).await;
                    return (String::new(), Err(TrainerError::Cancelled));
                }
                _ = &mut deadline => {
                    self.delete(&jobs, &name).await;
                    break Err(TrainerError::Timeout(spec.timeout));
                }
                _ = tokio::time::sleep(poll) => {}
            }
            match jobs.get(&name).await {
                Ok(job) => {
                    if let Some(done) = finished(&job) {
                        break done;
                    }
                }
                Err(e) => tracing::warn!(job = %name, error = %e, "reading the trainer Job"),
            }
        };
        let tail = self.tail(&name).await;
        if let Err(e) = tokio::fs::write(dir.join("trainer.log"), tail.clone() + "\n").await {
            tracing::warn!(job = %name, error = %e, "writing trainer.log");
        }
        tracing::info!(job = %name, ok = result.is_ok(), "trainer Job finished");
        (tail, result)
    }

    /// The last lines the Job's pod wrote (empty if they cannot be read).
    async fn tail(&self, job: &str) -> String {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let list = match pods
            .list(&ListParams::default().labels(&format!("job-name={job}")))
            .await
        {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(%job, error = %e, "listing the trainer Job's pods");
                return String::new();
            }
        };
        let Some(pod) = list.items.first().and_then(|p| p.metadata.name.clone()) else {
            return String::new();
        };
        let params = LogParams {
            tail_lines: Some(TAIL_LINES as i64),
            ..Default::default()
        };
        match pods.logs(&pod, &params).await {
            Ok(text) => text.trim_end().to_owned(),
            Err(e) => {
                tracing::warn!(%job, error = %e, "reading the trainer's log");
                String::new()
            }
        }
    }

    async fn delete(&self, jobs: &Api<Job>, name: &str) {
        match jobs.delete(name, &DeleteParams::background()).await {
            Ok(_) => tracing::info!(job = %name, "trainer Job deleted"),
            Err(e) => tracing::warn!(job = %name, error = %e, "deleting the trainer Job"),
        }
    }
}

impl Runner for JobRunner {
    fn run<'a>(
        &'a self,
        spec: &'a Spec,
        args: &'a [OsString],
        dir: &'a Path,
        cancel: &'a CancellationToken,
    ) -> Pin<Box<dyn Future<Output = Outcome> + Send + 'a>> {
        Box::pin(self.run_job(spec, args, dir, cancel))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_job_runs_the_trainer_next_to_the_controller_on_its_volume() {
        let config = TrainingJobConfig {
            image: "registry.example/edgedesk-trainer:1".into(),
            command: vec![],
            data_claim: "edgedesk-data".into(),
            pod_labels: [("app.kubernetes.io/name".to_string(), "edgedesk".to_string())].into(),
            cpu: "2".into(),
            memory: "8Gi".into(),
            service_account: String::new(),
            poll_ms: 2000,
        };
        let name = job_name(Path::new("/var/lib/edgedesk/trainings/tr-0123456789ab"));
        assert!(
            name.starts_with("edgedesk-tr-0123456789ab-") && name.len() <= 63,
            "{name}"
        );
        let job = job_spec(
            &name,
            "tr-0123456789ab",
            &config,
            Path::new("/var/lib/edgedesk"),
            &[
                "python3".into(),
                "/opt/edgedesk/scripts/train_model.py".into(),
            ],
            &[
                "--out".into(),
                "/var/lib/edgedesk/trainings/tr-0123456789ab/bundle".into(),
            ],
            Duration::from_secs(3600),
        );
        let v = serde_json::to_value(&job).unwrap();
        let pod = &v["spec"]["template"]["spec"];
        let c = &pod["containers"][0];
        assert_eq!(c["image"], "registry.example/edgedesk-trainer:1");
        assert_eq!(
            c["command"],
            serde_json::json!([
                "python3",
                "/opt/edgedesk/scripts/train_model.py",
                "--out",
                "/var/lib/edgedesk/trainings/tr-0123456789ab/bundle"
            ])
        );
        assert_eq!(c["volumeMounts"][0]["mountPath"], "/var/lib/edgedesk");
        assert_eq!(
            pod["volumes"][0]["persistentVolumeClaim"]["claimName"],
            "edgedesk-data"
        );
        assert_eq!(c["resources"]["limits"]["memory"], "8Gi");
        assert_eq!(
            pod["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]["labelSelector"]
                ["matchLabels"]["app.kubernetes.io/name"],
            "edgedesk"
        );
        assert_eq!(pod["restartPolicy"], "Never");
        assert_eq!(v["spec"]["backoffLimit"], 0);
        assert_eq!(v["spec"]["activeDeadlineSeconds"], 3600);
        assert_eq!(
            v["metadata"]["labels"]["edgedesk.io/run"],
            "tr-0123456789ab"
        );
    }

    #[test]
    fn a_job_is_done_when_it_succeeded_or_failed_and_says_why() {
        let job = |status: serde_json::Value| -> Job {
            serde_json::from_value(serde_json::json!({"metadata": {"name": "j"}, "status": status}))
                .unwrap()
        };
        assert!(finished(&job(serde_json::json!({"active": 1}))).is_none());
        assert!(matches!(
            finished(&job(serde_json::json!({"succeeded": 1}))),
            Some(Ok(()))
        ));
        let failed = finished(&job(serde_json::json!({"failed": 1, "conditions": [
            {"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
             "message": "Job was active longer than specified deadline"}]})));
        let Some(Err(e)) = failed else {
            panic!("{failed:?}")
        };
        assert!(e.to_string().contains("DeadlineExceeded"), "{e}");
    }
}
