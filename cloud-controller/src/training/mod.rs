//! The learning loop's training runs on the standalone controller: the
//! labels people gave, plus the base data, through the same training
//! script as the shipped model, checked by the regression gate, then
//! signed, published and — on a supervisor's approval, or at once with
//! `learning.training.auto_promote` — rolled out (shadow, then waves).
//!
//! One run at a time, in the background; each has a directory under
//! `<data_dir>/trainings/<id>` (labels, baseline, bundle, `trainer.log`).
//! Parts: [`dataset`] (which labels train and which are held out),
//! [`trainer`] (the child process), [`gate`] (the pure verdict),
//! [`suggest`] (unlabelled questions grouped into suggested intents),
//! [`kb`] (knowledge-base releases: the answers without a training run).

pub mod dataset;
pub mod gate;
pub mod kb;
pub mod suggest;
pub mod trainer;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ed25519_dalek::SigningKey;
use edgedesk_common::bundle::{INPUT_TEXT_TOKENS, MANIFEST_FILE, Manifest};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::config::TrainingConfig;
use crate::downlink::now_ms;
use crate::rollouts::{CreateRollout, Rollouts};
use crate::store::trainings::{TrainingRow, TrainingState};
use crate::store::{ModelRow, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum TrainingError {
    #[error("a training run is already running ({0})")]
    Busy(String),
    #[error("no training run {0:?}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    /// Something else is under way, or was decided already.
    #[error("{0}")]
    Conflict(String),
    #[error("training run {0} is {1}; only a run awaiting approval can be approved")]
    NotAwaiting(String, &'static str),
    #[error(transparent)]
    Rollout(#[from] crate::rollouts::RolloutError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What to start a run with.
#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::ToSchema)]
pub struct StartTraining {
    /// The release to compare with (id, name@version or version). Default:
    /// the model of the newest rollout that succeeded, else the newest release.
    #[serde(default)]
    pub baseline: Option<String>,
}

/// The training service; cheap to clone.
#[derive(Clone)]
pub struct Trainings {
    pub store: Store,
    pub rollouts: Rollouts,
    pub config: TrainingConfig,
    pub models_dir: PathBuf,
    pub runs_dir: PathBuf,
    pub signing_key: SigningKey,
    pub onnxruntime: PathBuf,
    pub shutdown: CancellationToken,
    busy: Arc<AtomicBool>,
    /// Approvals one at a time: two clicks on "Approve" start one rollout.
    approving: Arc<tokio::sync::Mutex<()>>,
    /// One grouping of questions at a time, and how the last one went.
    grouping_busy: Arc<AtomicBool>,
    grouping: Arc<std::sync::Mutex<suggest::GroupingStatus>>,
    /// Where the trainer runs: a child process, or a Kubernetes Job.
    runner: Arc<dyn trainer::Runner>,
}

impl Trainings {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Store,
        rollouts: Rollouts,
        config: TrainingConfig,
        models_dir: PathBuf,
        runs_dir: PathBuf,
        signing_key: SigningKey,
        onnxruntime: PathBuf,
        shutdown: CancellationToken,
    ) -> Trainings {
        Trainings {
            store,
            rollouts,
            config,
            models_dir,
            runs_dir,
            signing_key,
            onnxruntime,
            shutdown,
            busy: Arc::new(AtomicBool::new(false)),
            approving: Arc::default(),
            grouping_busy: Arc::new(AtomicBool::new(false)),
            grouping: Arc::new(std::sync::Mutex::new(suggest::GroupingStatus {
                state: "idle".into(),
                ..Default::default()
            })),
            runner: Arc::new(trainer::ChildProcess),
        }
    }

    /// Run the trainer with `runner` instead of as a child process.
    pub fn with_runner(mut self, runner: Arc<dyn trainer::Runner>) -> Trainings {
        self.runner = runner;
        self
    }

    /// Runs left `running` by a controller that stopped are failed: their
    /// child process died with it.
    pub async fn recover(&self) -> Result<(), StoreError> {
        for mut t in self.store.trainings(1000).await? {
            if t.state == TrainingState::Running {
                t.state = TrainingState::Failed;
                t.detail = "the controller stopped during the run".into();
                t.finished_at = Some(now_ms());
                tracing::warn!(training = %t.id, "training run interrupted by a restart");
                self.store.training_save(t).await?;
            }
        }
        Ok(())
    }

    /// Check what a run needs, record it and start it in the background.
    pub async fn start(&self, req: StartTraining, by: &str) -> Result<TrainingRow, TrainingError> {
        if self.busy.swap(true, Ordering::AcqRel) {
            let running = self
                .store
                .trainings(20)
                .await?
                .into_iter()
                .find(|t| t.state == TrainingState::Running)
                .map(|t| t.id)
                .unwrap_or_default();
            return Err(TrainingError::Busy(running));
        }
        // Freed when the run ends, or at once if preparing fails or the
        // request is dropped half-way (a client that hung up).
        let busy = Busy(self.busy.clone());
        let (row, prepared) = self.prepare(req, by).await?;
        let this = self.clone();
        let run = row.clone();
        tokio::spawn(async move {
            let _busy = busy;
            let id = run.id.clone();
            let finished = this.execute(run, prepared).await;
            if let Err(e) = finished {
                tracing::error!(training = %id, error = %e, "training run could not be recorded");
            }
        });
        Ok(row)
    }

    async fn prepare(
        &self,
        req: StartTraining,
        by: &str,
    ) -> Result<(TrainingRow, Prepared), TrainingError> {
        let baseline = self.baseline(req.baseline.as_deref()).await?;
        let labelled = self.store.labelled_samples().await?;
        let split = dataset::split(&labelled, self.config.held_out_fraction);
        if split.train.is_empty() {
            return Err(TrainingError::Invalid(format!(
                "no labelled samples to learn from ({} labelled, {} held out for evaluation, {} unusable)",
                labelled.len(),
                split.held_out.len(),
                split.unusable
            )));
        }
        let taken = self.versions_of(&baseline.name).await?;
        let row = TrainingRow {
            id: format!("tr-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
            kind: "model".into(),
            state: TrainingState::Running,
            requested_by: by.to_owned(),
            created_at: now_ms(),
            finished_at: None,
            baseline: baseline.id.clone(),
            baseline_version: baseline.version.clone(),
            version: dataset::next_version(&baseline.version, &taken),
            model_id: None,
            rollout_id: None,
            approved_by: None,
            trained_labels: split.train.len(),
            held_out_labels: split.held_out.len(),
            report: serde_json::json!({}),
            detail: String::new(),
            log_tail: String::new(),
        };
        self.store.training_save(row.clone()).await?;
        tracing::info!(training = %row.id, baseline = %row.baseline_version, version = %row.version,
            labels = row.trained_labels, held_out = row.held_out_labels, "training run started");
        Ok((row, Prepared { split, baseline }))
    }

    /// Publish the bundle in `dir`: the golden set checked once more, signed,
    /// stored as a release.
    async fn publish(&self, dir: &Path) -> Result<ModelRow, String> {
        crate::models::publish(
            &self.store,
            &self.models_dir,
            &self.signing_key,
            dir,
            &self.onnxruntime,
            now_ms(),
        )
        .await
        .map_err(|e| e.to_string())
    }

    /// Every published version of model `name`.
    async fn versions_of(&self, name: &str) -> Result<Vec<String>, StoreError> {
        Ok(self
            .store
            .models()
            .await?
            .into_iter()
            .filter(|m| m.name == name)
            .map(|m| m.version)
            .collect())
    }

    /// The configured trainer command with its limits, `args` appended,
    /// its output in `dir/trainer.log`, run where `runner` runs it.
    async fn run_trainer(&self, args: &[OsString], dir: &Path) -> trainer::Outcome {
        let spec = trainer::Spec {
            command: self.config.command.clone(),
            timeout: std::time::Duration::from_secs(self.config.timeout_secs),
            memory_mb: self.config.memory_mb,
        };
        self.runner.run(&spec, args, dir, &self.shutdown).await
    }

    /// `training.encoder_dir`, if it holds the encoder a model with one
    /// needs; otherwise what is wrong.
    fn encoder_dir_checked(&self, dir: PathBuf) -> Result<PathBuf, String> {
        if dir.join("e5-small-q4.bin").is_file() {
            return Ok(dir);
        }
        Err(format!(
            "training.encoder_dir ({}) holds no e5-small-q4.bin (scripts/provision.sh unpacks it there)",
            dir.display()
        ))
    }

    /// The release a candidate is compared with.
    async fn baseline(&self, key: Option<&str>) -> Result<ModelRow, TrainingError> {
        if let Some(key) = key {
            return self
                .store
                .model(key)
                .await?
                .ok_or_else(|| TrainingError::Invalid(format!("no model release {key:?}")));
        }
        let succeeded = self
            .store
            .rollouts()
            .await?
            .into_iter()
            .find(|r| r.state.phase.name() == "succeeded");
        let model = match succeeded {
            Some(r) => self.store.model(&r.model_id).await?,
            None => self.store.models().await?.into_iter().next(),
        };
        model.ok_or_else(|| {
            TrainingError::Invalid(
                "no published model to compare with: publish the fleet's model first (cloud-controller model publish)"
                    .into(),
            )
        })
    }

    /// The run, from the trainer to the verdict; its outcome is saved.
    async fn execute(&self, mut row: TrainingRow, prepared: Prepared) -> Result<(), StoreError> {
        let outcome = self.train_and_judge(&mut row, prepared).await;
        row.finished_at = Some(now_ms());
        match outcome {
            Ok(None) => {}
            Ok(Some(regressions)) => {
                row.state = TrainingState::Refused;
                row.detail = regressions;
                tracing::warn!(training = %row.id, detail = %row.detail, "candidate refused by the regression gate");
            }
            Err(detail) => {
                row.state = TrainingState::Failed;
                row.detail = detail;
                tracing::error!(training = %row.id, detail = %row.detail, "training run failed");
            }
        }
        self.store.training_save(row.clone()).await?;
        if row.state == TrainingState::AwaitingApproval && self.config.auto_promote {
            if let Err(e) = self.approve(&row.id, serde_json::json!({}), "auto").await {
                tracing::error!(training = %row.id, error = %e, "auto-promotion failed");
            }
        }
        Ok(())
    }

    /// `Ok(None)`: passed and published; `Ok(Some(why))`: refused; `Err`: failed.
    async fn train_and_judge(
        &self,
        row: &mut TrainingRow,
        Prepared { split, baseline }: Prepared,
    ) -> Result<Option<String>, String> {
        let dir = self.runs_dir.join(&row.id);
        let (labels, baseline_dir, bundle) = (
            dir.join("labels.csv"),
            dir.join("baseline"),
            dir.join("bundle"),
        );
        // File work (the baseline's model may be copied) off the async workers.
        let name = baseline.name.clone();
        let (models_dir, train) = (self.models_dir.clone(), split.train);
        let (d, l, b) = (dir.clone(), labels.clone(), baseline_dir.clone());
        let encoder_dir = self.config.encoder_dir.clone();
        // `--encoder DIR` when the fleet's model carries the sentence encoder.
        let encoder = blocking(move || {
            let io = |what: &str, e: std::io::Error| format!("{what}: {e}");
            std::fs::create_dir_all(&d).map_err(|e| io("run directory", e))?;
            dataset::write_csv(&l, &train).map_err(|e| io("labels.csv", e))?;
            materialise(&models_dir, &baseline, &b)?;
            Ok(has_encoder(&b)?.then_some(encoder_dir))
        })
        .await?;
        let encoder = match encoder {
            Some(dir) => Some(self.encoder_dir_checked(dir)?),
            None => None,
        };
        let mut args: Vec<OsString> = vec![
            "--data".into(),
            self.config.data_dir.clone().into(),
            "--extra".into(),
            labels.into(),
            "--out".into(),
            bundle.clone().into(),
            "--version".into(),
            row.version.clone().into(),
            "--name".into(),
            name.into(),
        ];
        if let Some(encoder) = encoder {
            args.extend(["--encoder".into(), encoder.into()]);
        }
        let (tail, result) = self.run_trainer(&args, &dir).await;
        row.log_tail = tail;
        result.map_err(|e| e.to_string())?;
        tracing::info!(training = %row.id, "trainer finished; judging the candidate");
        let answers = self
            .store
            .intent_answers()
            .await
            .map_err(|e| e.to_string())?;
        let b = bundle.clone();
        let shipped = blocking(move || ship_answers(&b, &answers)).await?;
        if !shipped.is_empty() {
            tracing::info!(training = %row.id, ?shipped, "answers written for learnt intents ship with the model");
        }

        // Both models on the same rows: their own validation figures (the
        // same split of the same base data) and the held-out labels.
        let (ort, held_out, base_dir, cand_dir) = (
            self.onnxruntime.clone(),
            split.held_out,
            baseline_dir.clone(),
            bundle.clone(),
        );
        let figures = blocking(move || {
            edgedesk_nlu::runtime::init(&ort).map_err(|e| e.to_string())?;
            let b = evaluate(&base_dir, &held_out)?;
            let c = evaluate(&cand_dir, &held_out)?;
            Ok((b, c))
        })
        .await?;
        let ((base_val, base_held), (cand_val, cand_held)) = figures;
        let tol = gate::Tolerance {
            overall: self.config.tolerance,
            intent: self.config.intent_tolerance,
            min_rows: self.config.min_rows,
        };
        let mut regressions = gate::judge("validation", &base_val, &cand_val, &tol);
        regressions.extend(gate::judge("held-out labels", &base_held, &cand_held, &tol));
        row.report = serde_json::json!({
            "tolerance": tol,
            "validation": {"baseline": base_val, "candidate": cand_val},
            "held_out_labels": {"baseline": base_held, "candidate": cand_held},
            "regressions": regressions,
        });
        if !regressions.is_empty() {
            let why: Vec<String> = regressions.iter().map(ToString::to_string).collect();
            return Ok(Some(why.join("; ")));
        }
        let model = self.publish(&bundle).await?;
        tracing::info!(training = %row.id, model = %model.id, version = %model.version,
            "candidate passed the gate and is published; awaiting approval");
        row.model_id = Some(model.id);
        row.state = TrainingState::AwaitingApproval;
        Ok(None)
    }

    /// Start the rollout of a passed run's model. `settings` may carry any
    /// rollout field (`waves`, `shadow_secs`, …) over the configured ones.
    pub async fn approve(
        &self,
        id: &str,
        settings: serde_json::Value,
        by: &str,
    ) -> Result<TrainingRow, TrainingError> {
        let _one = self.approving.lock().await;
        let mut row = self
            .store
            .training(id)
            .await?
            .ok_or_else(|| TrainingError::NotFound(id.to_owned()))?;
        if row.state != TrainingState::AwaitingApproval {
            return Err(TrainingError::NotAwaiting(row.id, row.state.as_str()));
        }
        let model = row.model_id.clone().unwrap_or_default();
        // A knowledge-base release has the fleet's model unchanged: a
        // shadow phase would compare it with itself.
        let shadow = if row.kind == "knowledge_base" {
            0
        } else {
            self.config.shadow_secs
        };
        let mut plan = serde_json::json!({
            "model": model,
            "waves": self.config.waves,
            "shadow_secs": shadow,
            "bake_secs": self.config.bake_secs,
        });
        match settings {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    if k != "model" {
                        plan[k] = v;
                    }
                }
            }
            serde_json::Value::Null => {}
            _ => {
                return Err(TrainingError::Invalid(
                    "the approval's body is a JSON object of rollout settings".into(),
                ));
            }
        }
        let req: CreateRollout = serde_json::from_value(plan)
            .map_err(|e| TrainingError::Invalid(format!("rollout settings: {e}")))?;
        let rollout = self.rollouts.create(req).await?;
        tracing::info!(training = %row.id, rollout = %rollout.id, by, "training run approved; rollout created");
        row.rollout_id = Some(rollout.id);
        row.approved_by = Some(by.to_owned());
        row.state = TrainingState::Promoted;
        self.store.training_save(row.clone()).await?;
        Ok(row)
    }
}

/// Most characters of an answer.
pub const MAX_ANSWER_CHARS: usize = 2000;
/// Most quick replies per language, and characters in one.
pub const MAX_QUICK_REPLIES: usize = 6;
pub const MAX_QUICK_REPLY_CHARS: usize = 60;

/// A supervisor's answer for an intent the model learns, checked: a valid
/// intent name (`new:NAME` too), and both languages, neither too long.
pub fn intent_answer(
    intent: &str,
    en: &str,
    zh: &str,
    quick_replies: crate::store::trainings::QuickReplies,
    by: &str,
) -> Result<crate::store::trainings::IntentAnswer, TrainingError> {
    let intent = dataset::intent_of(intent)
        .filter(|i| *i != "out_of_scope")
        .ok_or_else(|| {
            TrainingError::Invalid("an intent name is a-z, 0-9 and _ (new:NAME works too)".into())
        })?
        .to_owned();
    let (en, zh) = (en.trim().to_owned(), zh.trim().to_owned());
    for (lang, text) in [("English", &en), ("Chinese", &zh)] {
        if text.is_empty() {
            return Err(TrainingError::Invalid(format!(
                "write the answer in {lang} too: visitors ask in both languages"
            )));
        }
        if text.chars().count() > MAX_ANSWER_CHARS {
            return Err(TrainingError::Invalid(format!(
                "the {lang} answer is longer than {MAX_ANSWER_CHARS} characters"
            )));
        }
    }
    let mut quick = crate::store::trainings::QuickReplies::default();
    for (lang, given, kept) in [
        ("English", quick_replies.en, &mut quick.en),
        ("Chinese", quick_replies.zh, &mut quick.zh),
    ] {
        *kept = given
            .iter()
            .map(|q| q.trim().to_owned())
            .filter(|q| !q.is_empty())
            .collect();
        if kept.len() > MAX_QUICK_REPLIES {
            return Err(TrainingError::Invalid(format!(
                "at most {MAX_QUICK_REPLIES} {lang} quick replies"
            )));
        }
        if let Some(q) = kept
            .iter()
            .find(|q| q.chars().count() > MAX_QUICK_REPLY_CHARS)
        {
            return Err(TrainingError::Invalid(format!(
                "the {lang} quick reply {q:?} is longer than {MAX_QUICK_REPLY_CHARS} characters"
            )));
        }
    }
    Ok(crate::store::trainings::IntentAnswer {
        intent,
        en,
        zh,
        quick_replies: quick,
        updated_by: by.to_owned(),
        updated_at: now_ms(),
    })
}

/// What a run needs that `prepare` found: the labels, split, and the
/// release the candidate is compared with.
struct Prepared {
    split: dataset::Split,
    baseline: ModelRow,
}

/// Run `f` on the blocking pool; a panic there is the run's failure.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| e.to_string())?
}

/// The one-run-at-a-time flag, cleared when dropped.
struct Busy(Arc<AtomicBool>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Write the answers supervisors gave for the candidate's intents into its
/// bundle (`answers.toml`, listed with its hash in the manifest, so the
/// release signs it); the intents shipped.
fn ship_answers(
    bundle: &Path,
    answers: &[crate::store::trainings::IntentAnswer],
) -> Result<Vec<String>, String> {
    use edgedesk_dialog::kb::MODEL_ANSWERS_FILE;
    let manifest_path = bundle.join(edgedesk_common::bundle::MANIFEST_FILE);
    let err = |e: &dyn std::fmt::Display| format!("{}: {e}", manifest_path.display());
    let text = std::fs::read_to_string(&manifest_path).map_err(|e| err(&e))?;
    let mut manifest: serde_json::Value = serde_json::from_str(&text).map_err(|e| err(&e))?;
    let labels: Vec<&str> = manifest["labels"]
        .as_array()
        .map(|l| l.iter().filter_map(|x| x.as_str()).collect())
        .unwrap_or_default();
    let mut table = toml::map::Map::new();
    let mut shipped = Vec::new();
    for a in answers
        .iter()
        .filter(|a| labels.contains(&a.intent.as_str()))
    {
        let mut entry = toml::map::Map::new();
        entry.insert("en".into(), a.en.clone().into());
        entry.insert("zh".into(), a.zh.clone().into());
        let q = &a.quick_replies;
        if !q.en.is_empty() || !q.zh.is_empty() {
            let mut quick = toml::map::Map::new();
            quick.insert("en".into(), q.en.clone().into());
            quick.insert("zh".into(), q.zh.clone().into());
            entry.insert("quick_replies".into(), toml::Value::Table(quick));
        }
        table.insert(a.intent.clone(), toml::Value::Table(entry));
        shipped.push(a.intent.clone());
    }
    let path = bundle.join(MODEL_ANSWERS_FILE);
    // The bundle's files may be hard links into the blob store: replaced,
    // never written through.
    let _ = std::fs::remove_file(&path);
    if shipped.is_empty() {
        if let Some(files) = manifest["files"].as_object_mut()
            && files.remove(MODEL_ANSWERS_FILE).is_some()
        {
            let out = serde_json::to_string_pretty(&manifest).map_err(|e| err(&e))?;
            let _ = std::fs::remove_file(&manifest_path);
            std::fs::write(&manifest_path, out).map_err(|e| err(&e))?;
        }
        return Ok(shipped);
    }
    let mut file = toml::map::Map::new();
    file.insert("intents".into(), toml::Value::Table(table));
    let body = toml::to_string(&toml::Value::Table(file)).map_err(|e| err(&e))?;
    // What the node will parse, checked here first.
    edgedesk_dialog::kb::ModelAnswers::parse(&body, MODEL_ANSWERS_FILE).map_err(|e| err(&e))?;
    std::fs::write(&path, &body).map_err(|e| err(&e))?;
    manifest["files"][MODEL_ANSWERS_FILE] = hex::encode(Sha256::digest(body.as_bytes())).into();
    let out = serde_json::to_string_pretty(&manifest).map_err(|e| err(&e))?;
    let _ = std::fs::remove_file(&manifest_path);
    std::fs::write(&manifest_path, out).map_err(|e| err(&e))?;
    Ok(shipped)
}

/// Lay out a published release's files under `dir` (hard links into the
/// blob store, copies across file systems).
fn materialise(models_dir: &Path, model: &ModelRow, dir: &Path) -> Result<(), String> {
    let release: edgedesk_common::release::Release = serde_json::from_str(&model.signed.release)
        .map_err(|e| format!("release {}: {e}", model.id))?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for (name, entry) in &release.files {
        let src = crate::models::blob_path(models_dir, &entry.sha256)
            .ok_or_else(|| format!("release {}: bad hash for {name}", model.id))?;
        let dest = dir.join(name);
        let _ = std::fs::remove_file(&dest);
        if std::fs::hard_link(&src, &dest).is_err() {
            std::fs::copy(&src, &dest).map_err(|e| format!("{}: {e}", src.display()))?;
        }
    }
    Ok(())
}

/// Whether the bundle in `dir` carries the sentence encoder (input kind
/// `text+tokens`). Blocking.
fn has_encoder(dir: &Path) -> Result<bool, String> {
    let text = std::fs::read_to_string(dir.join(MANIFEST_FILE))
        .map_err(|e| format!("the fleet model's manifest: {e}"))?;
    let manifest =
        Manifest::parse(&text).map_err(|e| format!("the fleet model's manifest: {e}"))?;
    Ok(manifest.input_kind == INPUT_TEXT_TOKENS)
}

/// A bundle's validation figures (from its manifest) and its figures on the
/// held-out labels (classified here). Blocking.
fn evaluate(
    bundle: &Path,
    held_out: &[(String, String, String)],
) -> Result<(gate::Figures, gate::Figures), String> {
    let model = edgedesk_nlu::Model::load(bundle, 1, 0.0).map_err(|e| e.to_string())?;
    let manifest = model.manifest();
    let validation = gate::from_manifest(&manifest.metrics);
    let mut predicted = Vec::with_capacity(held_out.len());
    for (text, _, _) in held_out {
        predicted.push(model.classify(text).map_err(|e| e.to_string())?);
    }
    let scored: Vec<gate::Scored<'_>> = held_out
        .iter()
        .zip(&predicted)
        .map(|((_, label, lang), p)| gate::Scored {
            lang,
            expected: label,
            predicted: &p.label,
            answered: p.answered,
        })
        .collect();
    Ok((
        validation,
        gate::from_rows(&scored, &manifest.out_of_scope_label),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::trainings::IntentAnswer;

    fn answer(intent: &str) -> IntentAnswer {
        IntentAnswer {
            intent: intent.into(),
            en: format!("About {intent}."),
            zh: "关于这个。".into(),
            quick_replies: Default::default(),
            updated_by: "sup".into(),
            updated_at: 1,
        }
    }

    #[test]
    fn answers_for_the_models_intents_ship_signed_in_its_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = dir.path().join("manifest.json");
        std::fs::write(
            &manifest,
            r#"{"labels": ["greeting", "queue_number"], "files": {"model.onnx": "ab"}}"#,
        )
        .unwrap();
        // No answer for any of its intents: nothing written.
        assert!(
            ship_answers(dir.path(), &[answer("elsewhere")])
                .unwrap()
                .is_empty()
        );
        assert!(!dir.path().join("answers.toml").exists());
        let shipped =
            ship_answers(dir.path(), &[answer("queue_number"), answer("elsewhere")]).unwrap();
        assert_eq!(shipped, ["queue_number"]);
        let body = std::fs::read_to_string(dir.path().join("answers.toml")).unwrap();
        let parsed = edgedesk_dialog::kb::ModelAnswers::parse(&body, "t").unwrap();
        assert_eq!(parsed.0["queue_number"].en, "About queue_number.");
        assert!(!parsed.0.contains_key("elsewhere"));
        let m: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
        assert_eq!(
            m["files"]["answers.toml"],
            hex::encode(Sha256::digest(body.as_bytes()))
        );
        assert_eq!(
            m["files"]["model.onnx"], "ab",
            "the other files stay listed"
        );
    }
}
