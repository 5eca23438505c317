//! A loaded, verified model bundle and the swappable handle on the active one.
//!
//! [`Model::load`] checks the manifest and every file's sha256 and builds a
//! pool of single-threaded ONNX sessions; [`Model::load_checked`] also runs
//! the golden set, once. A bundle with a sentence encoder (`text+tokens`)
//! also gets its text as token ids, tokenised here with the bundle's own
//! vocabulary ([`crate::tokenizer`]). A bundle with a first stage (a cheap
//! n-gram graph, `manifest.first_stage`) runs it on every text first and the
//! main model only on the texts it is not sure of. `Session::run` needs
//! `&mut`, so each session sits behind its own mutex and callers take the
//! first free one. Callers on an async runtime run these on a blocking
//! thread, never on a worker.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use edgedesk_common::bundle::{
    GOLDEN_FILE, GoldenItem, INPUT_TEXT_TOKENS, MODEL_FILE, Manifest, TOKENIZER_FILE,
};
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::Tensor;

use crate::bundle::verify_bundle;
use crate::tokenizer::Unigram;
use crate::{NluError, runtime};

/// Golden-set runs in this process (a model is checked once per load).
static GOLDEN_RUNS: AtomicUsize = AtomicUsize::new(0);

/// How many times this process has run a golden set.
pub fn golden_runs() -> usize {
    GOLDEN_RUNS.load(Ordering::Relaxed)
}

/// The outcome of classifying one utterance.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// The most probable label (may be the out-of-scope label).
    pub label: String,
    pub confidence: f32,
    /// `true` when the node should answer with this intent: confident enough
    /// and not out of scope.
    pub answered: bool,
    /// The runners-up after `label`, best first, as (class index, score):
    /// [`Model::label_of`] names them. Kept as indices so classifying
    /// allocates nothing for them; only a learning sample names them.
    pub runners_up: [Option<(usize, f32)>; 2],
    /// `true` when the bundle's first stage answered alone (the main model
    /// did not run for this text).
    pub first_stage: bool,
}

pub struct Model {
    manifest: Manifest,
    dir: PathBuf,
    threshold: f32,
    sessions: Pool,
    input_name: String,
    prob_name: String,
    tokens: Option<Tokens>,
    first: Option<FirstStage>,
}

/// Sessions of one graph; a caller takes the first free one.
struct Pool {
    sessions: Vec<Mutex<Session>>,
    next: AtomicUsize,
}

impl Pool {
    /// `n` (at least one) single-threaded sessions of the graph in `bytes`.
    fn new(bytes: &[u8], n: usize) -> Result<Pool, NluError> {
        let env = runtime::environment()
            .ok_or_else(|| NluError::Runtime("ONNX Runtime is not initialised".into()))?;
        let mut sessions = Vec::with_capacity(n.max(1));
        for _ in 0..n.max(1) {
            let session = Session::builder(env)?
                .with_intra_threads(1)
                .map_err(|e| NluError::Onnx(e.to_string()))?
                .with_inter_threads(1)
                .map_err(|e| NluError::Onnx(e.to_string()))?
                .with_optimization_level(GraphOptimizationLevel::Level3)
                .map_err(|e| NluError::Onnx(e.to_string()))?
                // No arena and no memory patterns: both keep each session's
                // largest working set (a batch under load) for good; freed
                // to the allocator instead, the node's RSS at 1,000 visitors
                // and 1,000 msg/s is 243-246 MiB against 254 at the same
                // throughput (docs/BENCHMARKS.md, "the first stage").
                .with_memory_pattern(false)
                .map_err(|e| NluError::Onnx(e.to_string()))?
                .with_execution_providers([ort::ep::CPU::default()
                    .with_arena_allocator(false)
                    .build()])
                .map_err(|e| NluError::Onnx(e.to_string()))?
                .commit_from_memory(bytes)?;
            sessions.push(Mutex::new(session));
        }
        Ok(Pool {
            sessions,
            next: AtomicUsize::new(0),
        })
    }

    /// An error unless the graph has every input of `inputs` and `output`.
    fn check(&self, inputs: &[&str], output: &str, what: &str) -> Result<(), NluError> {
        let first = self.sessions[0].lock().unwrap_or_else(|p| p.into_inner());
        for name in inputs {
            if !first.inputs().iter().any(|i| i.name() == *name) {
                return Err(NluError::Shape(format!(
                    "{what} has no input named {name:?}"
                )));
            }
        }
        if !first.outputs().iter().any(|o| o.name() == output) {
            return Err(NluError::Shape(format!(
                "{what} has no output named {output:?}"
            )));
        }
        Ok(())
    }

    fn take(&self) -> std::sync::MutexGuard<'_, Session> {
        let n = self.sessions.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        for i in 0..n {
            if let Ok(guard) = self.sessions[(start + i) % n].try_lock() {
                return guard;
            }
        }
        // All busy: wait for the one we were handed. A poisoned lock only means
        // another caller panicked mid-run; the session itself is still usable.
        self.sessions[start % n]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}

/// A bundle's first stage and the bar above which it answers alone.
struct FirstStage {
    sessions: Pool,
    min_confidence: f32,
}

/// The token side of a `text+tokens` bundle.
#[derive(Debug)]
struct Tokens {
    unigram: Unigram,
    prefix: String,
    max_tokens: usize,
    ids_name: String,
    mask_name: String,
}

impl Tokens {
    /// The ids of `text` (a batch of one: no padding, so the mask is all ones).
    fn ids(&self, text: &str) -> Vec<i64> {
        self.unigram
            .encode(&self.prefix, text, self.max_tokens)
            .into_iter()
            .map(i64::from)
            .collect()
    }
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("name", &self.manifest.name)
            .field("version", &self.manifest.version.to_string())
            .field("dir", &self.dir)
            .finish()
    }
}

impl Model {
    /// Load the bundle in `dir` after checking its hashes, without running
    /// the golden set. `threshold_override` > 0 replaces the manifest's
    /// confidence threshold. ONNX Runtime must be initialised.
    pub fn load(dir: &Path, sessions: usize, threshold_override: f32) -> Result<Model, NluError> {
        let manifest = verify_bundle(dir)?;
        let read = |name: &str| {
            std::fs::read(dir.join(name)).map_err(|source| NluError::Io {
                path: dir.join(name),
                source,
            })
        };
        let pool = Pool::new(&read(MODEL_FILE)?, sessions)?;
        let input_name = manifest
            .inputs
            .get("text")
            .cloned()
            .unwrap_or_else(|| "text".into());
        let prob_name = manifest
            .outputs
            .get("probabilities")
            .cloned()
            .unwrap_or_else(|| "probabilities".into());
        pool.check(&[&input_name], &prob_name, "model")?;
        let tokens = if manifest.input_kind == INPUT_TEXT_TOKENS {
            let path = dir.join(TOKENIZER_FILE);
            let bytes = std::fs::read(&path).map_err(|source| NluError::Io {
                path: path.clone(),
                source,
            })?;
            let spec = manifest.tokens.clone().ok_or_else(|| {
                NluError::Shape("a text+tokens bundle without its tokens section".into())
            })?;
            let tokens = Tokens {
                unigram: Unigram::from_json(&bytes)?,
                prefix: spec.prefix,
                max_tokens: spec.max_tokens,
                ids_name: manifest.inputs["input_ids"].clone(),
                mask_name: manifest.inputs["mask"].clone(),
            };
            pool.check(&[&tokens.ids_name, &tokens.mask_name], &prob_name, "model")?;
            Some(tokens)
        } else {
            None
        };
        let threshold = if threshold_override > 0.0 {
            threshold_override
        } else {
            manifest.confidence_threshold
        };
        let first = match &manifest.first_stage {
            Some(spec) => {
                let sessions = Pool::new(&read(&spec.file)?, sessions)?;
                sessions.check(&[&input_name], &prob_name, &spec.file)?;
                Some(FirstStage {
                    sessions,
                    // Never below an operator's higher threshold: what the
                    // first stage takes it answers, and a question it is
                    // less sure of than that gets the full model.
                    min_confidence: spec.min_confidence.max(threshold),
                })
            }
            None => None,
        };
        let model = Model {
            manifest,
            dir: dir.to_owned(),
            threshold,
            sessions: pool,
            input_name,
            prob_name,
            tokens,
            first,
        };
        Ok(model)
    }

    /// [`Model::load`], then the golden set: what a model must pass before
    /// it serves anyone.
    pub fn load_checked(
        dir: &Path,
        sessions: usize,
        threshold_override: f32,
    ) -> Result<Model, NluError> {
        let model = Model::load(dir, sessions, threshold_override)?;
        model.check_golden()?;
        Ok(model)
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn threshold(&self) -> f32 {
        self.threshold
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Run every golden utterance; all must give the expected label, and
    /// in-scope ones must clear the threshold.
    pub fn check_golden(&self) -> Result<(), NluError> {
        GOLDEN_RUNS.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(GOLDEN_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| NluError::Io {
            path: path.clone(),
            source,
        })?;
        let mut total = 0;
        let mut failures = Vec::new();
        for (n, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let item: GoldenItem = serde_json::from_str(line)
                .map_err(|e| NluError::Shape(format!("{GOLDEN_FILE} line {}: {e}", n + 1)))?;
            total += 1;
            let p = self.classify(&item.text)?;
            let oos = item.label == self.manifest.out_of_scope_label;
            let ok = p.label == item.label && (oos || p.confidence >= self.threshold);
            if !ok {
                failures.push(format!(
                    "{:?}: expected {}, got {} ({:.2})",
                    item.text, item.label, p.label, p.confidence
                ));
            }
        }
        if total == 0 {
            return Err(NluError::Golden {
                failed: 0,
                total: 0,
                first: "golden set is empty".into(),
            });
        }
        if let Some(first) = failures.first() {
            return Err(NluError::Golden {
                failed: failures.len(),
                total,
                first: first.clone(),
            });
        }
        Ok(())
    }

    /// Classify one utterance (raw text; preprocessing lives in the model).
    pub fn classify(&self, text: &str) -> Result<Prediction, NluError> {
        let (probs, first) = self.run(&[text.to_owned()])?;
        Ok(self.predict(&probs, first[0]))
    }

    /// Classify several utterances (the inference pool batches visitors'
    /// turns this way under load): the first stage, if any, in one ONNX
    /// Runtime call, then the main model on the texts it left.
    pub fn classify_batch(&self, texts: &[String]) -> Result<Vec<Prediction>, NluError> {
        let n = self.manifest.labels.len();
        let (flat, first) = self.run(texts)?;
        Ok(flat
            .chunks_exact(n)
            .zip(first)
            .map(|(p, first)| self.predict(p, first))
            .collect())
    }

    /// Whether the bundle has a first stage (`manifest.first_stage`).
    pub fn has_first_stage(&self) -> bool {
        self.first.is_some()
    }

    fn predict(&self, probs: &[f32], first_stage: bool) -> Prediction {
        let (best, confidence) = top(probs);
        let label = self.manifest.labels[best].clone();
        let answered = confidence >= self.threshold && label != self.manifest.out_of_scope_label;
        // The two next best, without sorting every class.
        let mut runners_up: [(usize, f32); 2] = [(usize::MAX, f32::MIN); 2];
        for (i, &p) in probs.iter().enumerate() {
            if i == best {
                continue;
            }
            if p > runners_up[0].1 {
                runners_up[1] = runners_up[0];
                runners_up[0] = (i, p);
            } else if p > runners_up[1].1 {
                runners_up[1] = (i, p);
            }
        }
        Prediction {
            label,
            confidence,
            answered,
            runners_up: runners_up.map(|r| (r.0 != usize::MAX).then_some(r)),
            first_stage,
        }
    }

    /// The label of class `index` (manifest order), if there is one.
    pub fn label_of(&self, index: usize) -> Option<&str> {
        self.manifest.labels.get(index).map(String::as_str)
    }

    /// Class probabilities in manifest label order.
    pub fn probabilities(&self, text: &str) -> Result<Vec<f32>, NluError> {
        Ok(self.run(&[text.to_owned()])?.0)
    }

    /// Probabilities of `texts`, row after row (`texts.len() × labels`),
    /// and for each text whether the first stage answered it alone.
    fn run(&self, texts: &[String]) -> Result<(Vec<f32>, Vec<bool>), NluError> {
        let Some(first) = &self.first else {
            return Ok((self.run_main(texts)?, vec![false; texts.len()]));
        };
        if texts.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let n = self.manifest.labels.len();
        let mut all = self.run_text(&mut first.sessions.take(), texts)?;
        // As the training script decides (first_stage_takes): sure enough,
        // and not out of scope.
        let taken: Vec<bool> = all
            .chunks_exact(n)
            .map(|p| {
                let (best, confidence) = top(p);
                confidence >= first.min_confidence
                    && self.manifest.labels[best] != self.manifest.out_of_scope_label
            })
            .collect();
        let rest: Vec<usize> = (0..texts.len()).filter(|&i| !taken[i]).collect();
        if !rest.is_empty() {
            let left: Vec<String> = rest.iter().map(|&i| texts[i].clone()).collect();
            let main = self.run_main(&left)?;
            for (row, &i) in main.chunks_exact(n).zip(&rest) {
                all[i * n..(i + 1) * n].copy_from_slice(row);
            }
        }
        Ok((all, taken))
    }

    /// The main model's probabilities of `texts`, row after row.
    fn run_main(&self, texts: &[String]) -> Result<Vec<f32>, NluError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let mut session = self.sessions.take();
        let Some(tokens) = &self.tokens else {
            return self.run_text(&mut session, texts);
        };
        // One call per text: the int8 encoder quantises its activations with
        // one scale per call, so a text padded into a batch would not come
        // out as it does alone (nor as it did in training).
        let mut all = Vec::with_capacity(texts.len() * self.manifest.labels.len());
        for text in texts {
            let input = Tensor::from_string_array(([1usize, 1usize], std::slice::from_ref(text)))?;
            let ids = tokens.ids(text);
            let n = ids.len();
            let ids = Tensor::from_array(([1usize, n], ids))?;
            let mask = Tensor::from_array(([1usize, n], vec![1f32; n]))?;
            let outputs = session.run(ort::inputs![
                self.input_name.as_str() => input,
                tokens.ids_name.as_str() => ids,
                tokens.mask_name.as_str() => mask,
            ])?;
            all.extend(self.probabilities_of(&outputs, 1)?);
        }
        Ok(all)
    }

    /// One call of a graph that reads text alone (the first stage, or a
    /// `text` bundle) on all of `texts`.
    fn run_text(&self, session: &mut Session, texts: &[String]) -> Result<Vec<f32>, NluError> {
        let input = Tensor::from_string_array(([texts.len(), 1usize], texts))?;
        let outputs = session.run(ort::inputs![self.input_name.as_str() => input])?;
        self.probabilities_of(&outputs, texts.len())
    }

    /// The probabilities output of a call on `n` texts, checked against the labels.
    fn probabilities_of(
        &self,
        outputs: &ort::session::SessionOutputs<'_>,
        n: usize,
    ) -> Result<Vec<f32>, NluError> {
        let (shape, data) = outputs[self.prob_name.as_str()].try_extract_tensor::<f32>()?;
        if data.len() != n * self.manifest.labels.len() {
            return Err(NluError::Shape(format!(
                "probabilities shape {shape:?} for {} texts and {} labels",
                n,
                self.manifest.labels.len()
            )));
        }
        Ok(data.to_vec())
    }
}

/// The index and value of the largest probability (the first of equals).
fn top(probs: &[f32]) -> (usize, f32) {
    probs.iter().copied().enumerate().fold(
        (0, f32::MIN),
        |acc, (i, p)| if p > acc.1 { (i, p) } else { acc },
    )
}

/// The one swappable handle on the active model. Readers clone the `Arc`
/// and keep using that model even if a swap happens meanwhile.
#[derive(Debug)]
pub struct ActiveModel {
    current: RwLock<Arc<Model>>,
}

impl ActiveModel {
    pub fn new(model: Model) -> ActiveModel {
        ActiveModel {
            current: RwLock::new(Arc::new(model)),
        }
    }

    pub fn get(&self) -> Arc<Model> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Make `model` active; returns the previous one.
    pub fn swap(&self, model: Model) -> Arc<Model> {
        let mut guard = self.current.write().unwrap_or_else(|p| p.into_inner());
        std::mem::replace(&mut *guard, Arc::new(model))
    }
}
