//! The node's model manager: takes a signed release from a rollout command to
//! the active model, and back.
//!
//! Steps of an update, each safe to be killed at (kill -9 tested):
//! 1. verify the release's signature with the key pinned at enrolment; refuse
//!    a release of another model, or a version older than the newest this
//!    node has ever run (kept in `active.json`; only `model_rollback` goes
//!    back: TUF's rollback and freeze attacks);
//! 2. download each file over QUIC into `incoming/` (verified per chunk,
//!    resumable), then assemble `versions/.<v>.staging/` and rename it to
//!    `versions/<v>/` (fsynced);
//! 3. load it into new ONNX sessions and run the golden set against the
//!    manifest's threshold;
//! 4. swap the in-memory model (readers holding the old `Arc` finish on it),
//!    then rewrite `active.json` (temp file, fsync, rename).
//!
//! At start the node loads the version `active.json` names, else the newest
//! kept version that loads, else the configured factory bundle. The previous
//! `keep` versions stay on disk for rollbacks. After a swap the manager
//! counts low-confidence turns per version; heartbeats report both rates.
//!
//! File work (hashing, copying, fsync) runs on blocking threads ([`blocking`]),
//! never on the async workers.

pub mod fetch;
pub mod shadow;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use edgedesk_common::bundle::MANIFEST_FILE;
use edgedesk_common::release::{Release, SignedRelease};
use edgedesk_common::sync::ModelHealth;
use serde::{Deserialize, Serialize};

use edgedesk_nlu::{ActiveModel, Model, NluError};
pub use fetch::FetchContext;

/// Run blocking file work on the blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ModelError> + Send + 'static,
) -> Result<T, ModelError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ModelError::Io(std::io::Error::other(e.to_string())))?
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("release refused: {0}")]
    Refused(String),
    #[error("download failed: {0}")]
    Fetch(String),
    #[error("verification failed: {0}")]
    Verify(String),
    #[error("the new model failed: {0}")]
    Model(#[from] NluError),
    #[error("model files: {0}")]
    Io(#[from] std::io::Error),
    #[error("another model change is in progress")]
    Busy,
    #[error("version {0} is not kept on this node")]
    NotKept(String),
}

impl ModelError {
    /// Short reason for metrics and acknowledgements.
    pub fn reason(&self) -> &'static str {
        match self {
            ModelError::Refused(_) => "refused",
            ModelError::Fetch(_) => "fetch",
            ModelError::Verify(_) => "verify",
            ModelError::Model(NluError::Golden { .. }) => "golden_set",
            ModelError::Model(_) => "load",
            ModelError::Io(_) => "io",
            ModelError::Busy => "busy",
            ModelError::NotKept(_) => "not_kept",
        }
    }
}

/// `active.json`: the version in use and the ones kept, newest first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Pointer {
    pub active: String,
    pub kept: Vec<String>,
    /// The newest version ever active here: the anti-rollback floor for
    /// updates (a rollback command lowers `active`, never this).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub highest: Option<String>,
}

/// Low-confidence counts of one model version.
#[derive(Debug, Clone, Default)]
struct Window {
    version: Option<semver::Version>,
    turns: u64,
    low: u64,
    escalations: u64,
}

impl Window {
    fn share(&self, n: u64) -> f64 {
        if self.turns == 0 {
            0.0
        } else {
            n as f64 / self.turns as f64
        }
    }
}

pub struct ModelManager {
    dir: PathBuf,
    keep: usize,
    sessions: usize,
    threshold_override: f32,
    pub active: Arc<ActiveModel>,
    /// A candidate running beside the active model (shadow mode).
    pub shadow: Arc<shadow::ShadowSlot>,
    watch: Mutex<(Window, Window)>,
    /// Versions on disk, newest first (what `active.json` says), kept in
    /// memory so heartbeats never read the disk.
    kept: Mutex<Vec<String>>,
    busy: tokio::sync::Mutex<()>,
    /// Test hook: abort the process at this step (`EDGEDESK_MODEL_CRASH_AT`).
    crash_at: Option<String>,
}

/// Interrupted downloads resumed before the update is reported failed.
const FETCH_RETRIES: u32 = 5;

/// Crash points, in order (see the module docs).
pub const STEPS: [&str; 4] = ["downloaded", "staged", "loaded", "swapped"];

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

fn valid_version(v: &str) -> bool {
    semver::Version::parse(v).is_ok()
}

impl ModelManager {
    /// Open the model folder and load the model to start with: the active
    /// version, else the newest kept one that loads, else `factory`.
    pub fn open(
        dir: &Path,
        keep: usize,
        factory: &Path,
        sessions: usize,
        threshold_override: f32,
    ) -> Result<ModelManager, NluError> {
        let pointer = Self::read_pointer(dir);
        let mut candidates: Vec<PathBuf> = Vec::new();
        if let Some(p) = &pointer {
            candidates.push(dir.join("versions").join(&p.active));
            candidates.extend(p.kept.iter().map(|v| dir.join("versions").join(v)));
        }
        let mut model = None;
        for c in candidates {
            match Model::load_checked(&c, sessions, threshold_override) {
                Ok(m) => {
                    model = Some(m);
                    break;
                }
                Err(e) => {
                    tracing::error!(dir = %c.display(), error = %e, "kept model does not load; trying the next")
                }
            }
        }
        let model = match model {
            Some(m) => m,
            None => {
                let m = Model::load_checked(factory, sessions, threshold_override)?;
                // Keep the factory bundle as a version too, so a rollback can
                // return to it; a node that cannot write here still serves.
                if let Err(e) = Self::adopt(dir, factory, &m) {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot keep the factory model as a version; rollbacks to it will not be possible");
                }
                m
            }
        };
        let version = model.manifest().version.clone();
        let kept = Self::read_pointer(dir).map(|p| p.kept).unwrap_or_default();
        Ok(ModelManager {
            kept: Mutex::new(kept),
            dir: dir.to_owned(),
            keep: keep.max(1),
            sessions,
            threshold_override,
            active: Arc::new(ActiveModel::new(model)),
            shadow: Arc::default(),
            watch: Mutex::new((
                Window {
                    version: Some(version),
                    ..Default::default()
                },
                Window::default(),
            )),
            busy: tokio::sync::Mutex::new(()),
            crash_at: std::env::var("EDGEDESK_MODEL_CRASH_AT").ok(),
        })
    }

    fn adopt(dir: &Path, factory: &Path, model: &Model) -> std::io::Result<()> {
        let version = model.manifest().version.to_string();
        let versions = dir.join("versions");
        let target = versions.join(&version);
        if edgedesk_nlu::bundle::verify_bundle(&target).is_err() {
            let staging = versions.join(format!(".{version}.staging"));
            let _ = std::fs::remove_dir_all(&staging);
            std::fs::create_dir_all(&staging)?;
            let mut names: Vec<&String> = model.manifest().files.keys().collect();
            let manifest = MANIFEST_FILE.to_owned();
            names.push(&manifest);
            for name in names {
                std::fs::copy(factory.join(name), staging.join(name))?;
                std::fs::File::open(staging.join(name))?.sync_all()?;
            }
            let _ = std::fs::remove_dir_all(&target);
            std::fs::rename(&staging, &target)?;
            sync_dir(&versions)?;
        }
        write_atomic(
            &dir.join("active.json"),
            &serde_json::to_vec_pretty(&Pointer {
                active: version.clone(),
                kept: vec![version.clone()],
                highest: Some(version),
            })
            .expect("serialises"),
        )
    }

    fn read_pointer(dir: &Path) -> Option<Pointer> {
        let text = std::fs::read_to_string(dir.join("active.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Test hook: with `EDGEDESK_MODEL_CRASH_AT=<step>` the process sends
    /// itself SIGKILL at that step (no destructors, no flushing: a kill -9).
    fn checkpoint(&self, step: &str) {
        if self.crash_at.as_deref() == Some(step) {
            tracing::error!(step, "EDGEDESK_MODEL_CRASH_AT reached: kill -9 (test hook)");
            let _ = std::process::Command::new("kill")
                .args(["-9", &std::process::id().to_string()])
                .status();
            std::process::abort();
        }
    }

    pub fn active_version(&self) -> String {
        self.active.get().manifest().version.to_string()
    }

    /// Versions on disk, newest first (from the pointer).
    pub fn kept(&self) -> Vec<String> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Count one classified visitor turn for the active model, and whether
    /// it ended in an escalation to a person.
    pub fn observe(&self, version: &semver::Version, answered: bool, escalated: bool) {
        let mut w = self.watch.lock().unwrap_or_else(|p| p.into_inner());
        if w.0.version.as_ref() == Some(version) {
            w.0.turns += 1;
            w.0.low += u64::from(!answered);
            w.0.escalations += u64::from(escalated);
        }
    }

    pub fn health(&self) -> ModelHealth {
        let kept = self.kept();
        let w = self.watch.lock().unwrap_or_else(|p| p.into_inner());
        let name =
            |v: &Option<semver::Version>| v.as_ref().map(|v| v.to_string()).unwrap_or_default();
        ModelHealth {
            version: name(&w.0.version),
            previous_version: name(&w.1.version),
            turns: w.0.turns,
            low_confidence_rate: w.0.share(w.0.low),
            escalation_rate: w.0.share(w.0.escalations),
            previous_turns: w.1.turns,
            previous_low_confidence_rate: w.1.share(w.1.low),
            previous_escalation_rate: w.1.share(w.1.escalations),
            kept,
        }
    }

    /// Verify, download, test and activate `signed`. Returns a short report.
    pub async fn update(
        &self,
        signed: &SignedRelease,
        pinned_key: &str,
        ctx: FetchContext,
    ) -> Result<String, ModelError> {
        let _busy = self.busy.try_lock().map_err(|_| ModelError::Busy)?;
        let Some((release, fetched)) = self.obtain(signed, pinned_key, ctx).await? else {
            return Ok(format!("{} already active", self.active_version()));
        };
        let version = release.version.to_string();
        self.activate(&version, &release).await?;
        Ok(format!("{version} active ({fetched} bytes fetched)"))
    }

    /// Verify, download and test `signed`, then run it in shadow beside the
    /// active model for `for_secs` (shadow mode: it answers nobody).
    pub async fn shadow(
        &self,
        signed: &SignedRelease,
        pinned_key: &str,
        ctx: FetchContext,
        rollout: &str,
        for_secs: u64,
    ) -> Result<String, ModelError> {
        let _busy = self.busy.try_lock().map_err(|_| ModelError::Busy)?;
        let Some((release, fetched)) = self.obtain(signed, pinned_key, ctx).await? else {
            return Err(ModelError::Refused(format!(
                "{} is already active: nothing to run in shadow",
                self.active_version()
            )));
        };
        let version = release.version.to_string();
        self.check_manifest(&version, &release).await?;
        let dir = self.dir.join("versions").join(&version);
        let (sessions, thr) = (self.sessions, self.threshold_override);
        let model = blocking(move || Ok(Model::load_checked(&dir, sessions, thr)?)).await?;
        let until = edgedesk_support::now_ms() + (for_secs as i64).saturating_mul(1000);
        self.shadow
            .start(shadow::ShadowRun::new(model, rollout, until));
        tracing::info!(%version, rollout, for_secs, "candidate model running in shadow");
        Ok(format!(
            "{version} in shadow for {for_secs} s ({fetched} bytes fetched)"
        ))
    }

    /// Verify `signed` against the pinned key and this node's model and
    /// version floor, and have its files on disk. `None`: it is the active
    /// version already. Returns the release and the bytes fetched.
    async fn obtain(
        &self,
        signed: &SignedRelease,
        pinned_key: &str,
        ctx: FetchContext,
    ) -> Result<Option<(Release, u64)>, ModelError> {
        let key = edgedesk_common::release::verifying_key(pinned_key)
            .map_err(|e| ModelError::Refused(e.to_string()))?;
        let release = signed
            .verify(&key)
            .map_err(|e| ModelError::Refused(e.to_string()))?;
        let (active, name) = {
            let model = self.active.get();
            let m = model.manifest();
            (m.version.clone(), m.name.clone())
        };
        if release.name != name {
            return Err(ModelError::Refused(format!(
                "release of {:?}, but this node runs {name:?}",
                edgedesk_support::logging::clip(&release.name)
            )));
        }
        if release.version == active {
            return Ok(None);
        }
        // TUF's rollback attack: never below the newest version ever active
        // here (kept in active.json), even after a rollback command.
        let dir = self.dir.clone();
        let highest = blocking(move || Ok(Self::read_pointer(&dir).and_then(|p| p.highest)))
            .await?
            .and_then(|v| semver::Version::parse(&v).ok());
        let floor = highest
            .filter(|h| *h > active)
            .unwrap_or_else(|| active.clone());
        if release.version < floor {
            return Err(ModelError::Refused(format!(
                "version {} is older than {floor}, the newest this node has run; only a rollback command goes back",
                release.version
            )));
        }
        let version = release.version.to_string();
        let target = self.dir.join("versions").join(&version);
        let kept_whole = {
            let target = target.clone();
            blocking(move || Ok(edgedesk_nlu::bundle::verify_bundle(&target).is_ok())).await?
        };
        let fetched = if kept_whole {
            0
        } else {
            self.download(&release, &target, ctx).await?
        };
        Ok(Some((release, fetched)))
    }

    async fn download(
        &self,
        release: &Release,
        target: &Path,
        ctx: FetchContext,
    ) -> Result<u64, ModelError> {
        let incoming = self.dir.join("incoming");
        let mut total = 0;
        let mut ready = Vec::new();
        // A dropped connection is retried (reconnecting, resuming from the
        // last verified chunk) with backoff; a verification failure is not.
        let mut attempt = 0u32;
        let mut fetcher: Option<fetch::Fetcher> = None;
        for (name, file) in &release.files {
            let dest = incoming.join(&file.sha256);
            loop {
                let have = {
                    let (dest, sha) = (dest.clone(), file.sha256.clone());
                    blocking(move || Ok(dest.is_file() && fetch::sha256_of(&dest)? == sha)).await?
                };
                if have {
                    break;
                }
                let connected = match fetcher.take() {
                    Some(f) => Ok(f),
                    None => fetch::Fetcher::connect(ctx.clone()).await,
                };
                let step = match connected {
                    Ok(f) => match f.fetch(file, &incoming, &dest).await {
                        Ok(n) => {
                            total += n;
                            fetcher = Some(f);
                            Ok(())
                        }
                        Err(e) => {
                            f.close().await;
                            Err(e)
                        }
                    },
                    Err(e) => Err(e),
                };
                match step {
                    Ok(()) => {}
                    Err(ModelError::Fetch(e)) if attempt < FETCH_RETRIES => {
                        attempt += 1;
                        let wait = std::time::Duration::from_millis(500 << attempt.min(5));
                        tracing::warn!(error = %e, attempt, ?wait, "model download interrupted; resuming");
                        tokio::time::sleep(wait).await;
                    }
                    Err(e) => return Err(e),
                }
            }
            ready.push((name.clone(), dest));
        }
        if let Some(f) = fetcher {
            f.close().await;
        }
        self.checkpoint("downloaded");
        let staging = self
            .dir
            .join("versions")
            .join(format!(".{}.staging", release.version));
        let (versions, target) = (self.dir.join("versions"), target.to_owned());
        blocking(move || {
            let _ = std::fs::remove_dir_all(&staging);
            std::fs::create_dir_all(&staging)?;
            for (name, src) in &ready {
                std::fs::copy(src, staging.join(name))?;
                std::fs::File::open(staging.join(name))?.sync_all()?;
            }
            sync_dir(&staging)?;
            let _ = std::fs::remove_dir_all(&target);
            std::fs::rename(&staging, &target)?;
            sync_dir(&versions)?;
            for (_, src) in ready {
                let _ = std::fs::remove_file(src);
            }
            Ok(())
        })
        .await?;
        self.checkpoint("staged");
        Ok(total)
    }

    /// Load `version` from disk, check it, swap it in, record the pointer.
    async fn activate(&self, version: &str, release: &Release) -> Result<(), ModelError> {
        self.check_manifest(version, release).await?;
        self.load_and_swap(version).await
    }

    /// The kept manifest of `version` must be the one the signed release names.
    async fn check_manifest(&self, version: &str, release: &Release) -> Result<(), ModelError> {
        let dir = self.dir.join("versions").join(version);
        // The manifest must be the one the signed release names.
        let manifest_sha = blocking(move || fetch::sha256_of(&dir.join(MANIFEST_FILE))).await?;
        if release.files.get(MANIFEST_FILE).map(|f| &f.sha256) != Some(&manifest_sha) {
            return Err(ModelError::Verify(
                "the kept manifest is not the released one".into(),
            ));
        }
        Ok(())
    }

    async fn load_and_swap(&self, version: &str) -> Result<(), ModelError> {
        let dir = self.dir.join("versions").join(version);
        let (sessions, thr) = (self.sessions, self.threshold_override);
        let model = blocking(move || Ok(Model::load_checked(&dir, sessions, thr)?)).await?;
        self.checkpoint("loaded");
        let new_version = model.manifest().version.clone();
        let previous = self.active.swap(model);
        let previous_version = previous.manifest().version.to_string();
        {
            let mut w = self.watch.lock().unwrap_or_else(|p| p.into_inner());
            w.1 = std::mem::take(&mut w.0);
            w.0 = Window {
                version: Some(new_version),
                ..Default::default()
            };
        }
        self.checkpoint("swapped");
        let (dir, keep, active) = (self.dir.clone(), self.keep, version.to_owned());
        let previous = previous_version.clone();
        let kept = blocking(move || {
            let pointer = Self::read_pointer(&dir).unwrap_or_default();
            let mut kept: Vec<String> = vec![active.clone(), previous];
            kept.extend(pointer.kept.iter().cloned());
            kept.retain(|v| dir.join("versions").join(v).is_dir());
            let mut seen = std::collections::HashSet::new();
            kept.retain(|v| seen.insert(v.clone()));
            let dropped: Vec<String> = kept.split_off(keep.min(kept.len()).max(1));
            let highest = [pointer.highest.as_deref(), Some(active.as_str())]
                .into_iter()
                .flatten()
                .filter_map(|v| semver::Version::parse(v).ok())
                .max()
                .map(|v| v.to_string());
            let pointer = Pointer {
                active: active.clone(),
                kept: kept.clone(),
                highest,
            };
            std::fs::create_dir_all(&dir)?;
            write_atomic(
                &dir.join("active.json"),
                &serde_json::to_vec_pretty(&pointer).expect("serialises"),
            )?;
            for v in dropped {
                if v != active {
                    let _ = std::fs::remove_dir_all(dir.join("versions").join(&v));
                }
            }
            Ok(kept)
        })
        .await?;
        *self.kept.lock().unwrap_or_else(|p| p.into_inner()) = kept;
        tracing::info!(version, previous = %previous_version, "model swapped");
        Ok(())
    }

    /// Return to `to` (the previous kept version if empty).
    pub async fn rollback(&self, to: &str) -> Result<String, ModelError> {
        let _busy = self.busy.try_lock().map_err(|_| ModelError::Busy)?;
        let active = self.active_version();
        let kept = self.kept();
        let to = if to.is_empty() {
            kept.iter()
                .find(|v| **v != active)
                .cloned()
                .ok_or_else(|| ModelError::NotKept("(previous)".into()))?
        } else {
            to.to_owned()
        };
        if to == active {
            return Ok(format!("{to} already active"));
        }
        let kept_dir = {
            let dir = self.dir.join("versions").join(&to);
            blocking(move || Ok(dir.is_dir())).await?
        };
        if !valid_version(&to) || !kept_dir {
            return Err(ModelError::NotKept(to));
        }
        self.load_and_swap(&to).await?;
        Ok(format!("rolled back to {to}"))
    }
}

/// The answers `model`'s bundle carries for intents the learning loop
/// taught it (`answers.toml`), if its signed manifest lists them (so their
/// hash was checked when the model loaded). Blocking: a file read.
pub fn load_answers(model: &Model) -> Result<Option<edgedesk_dialog::kb::ModelAnswers>, String> {
    use edgedesk_dialog::kb::{MODEL_ANSWERS_FILE, ModelAnswers};
    if !model.manifest().files.contains_key(MODEL_ANSWERS_FILE) {
        return Ok(None);
    }
    let path = model.dir().join(MODEL_ANSWERS_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    ModelAnswers::parse(&text, &path.display().to_string())
        .map(Some)
        .map_err(|e| e.to_string())
}
