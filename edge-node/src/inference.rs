//! Intent classification off the async workers.
//!
//! A few OS threads (`nlu.sessions`) run ONNX Runtime; a visitor's turn hands
//! its text to them through a bounded queue and awaits the answer, so a slow
//! or contended model never blocks a tokio worker. Under load a worker takes
//! whatever has queued up (at most `nlu.batch_max`) and classifies it in one
//! ONNX Runtime call (a model with the sentence encoder runs each text of
//! the batch alone; see `edgedesk_nlu::Model`).
//!
//! Queue policy: bounded (`nlu.queue_capacity`). When it is full the turn is
//! refused at once with `busy` — load is shed at the door instead of queueing
//! without bound (which lowered throughput for everyone) — and the page
//! offers to send again. Nothing is stored for a refused turn.
//!
//! Shadow mode: after a batch is answered, a candidate model in shadow
//! ([`crate::models::shadow`]) classifies the same texts and the two are
//! compared — unless turns are waiting, in which case the batch is skipped
//! (counted), so shadow work never delays a visitor's turn that is queued.

use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use edgedesk_nlu::{Model, NluError, Prediction};
use tokio::sync::oneshot;

use crate::models::shadow::{ShadowRun, ShadowSlot};

#[derive(Debug, thiserror::Error)]
pub enum InferError {
    /// The queue is full: shed this turn.
    #[error("the model is busy")]
    Busy,
    #[error(transparent)]
    Model(#[from] NluError),
    /// The pool has stopped (shutdown).
    #[error("the model pool has stopped")]
    Stopped,
}

struct Job {
    model: Arc<Model>,
    text: String,
    reply: oneshot::Sender<Result<Prediction, InferError>>,
}

/// Handle to the inference threads; cheap to clone. The threads stop when
/// every handle is gone.
#[derive(Clone)]
pub struct Inference {
    tx: Sender<Job>,
}

/// The worker threads, joined at shutdown.
pub struct Workers(Vec<JoinHandle<()>>);

impl Workers {
    pub fn join(self) {
        for w in self.0 {
            let _ = w.join();
        }
    }
}

impl Inference {
    /// Start `threads` workers behind a queue of `capacity` turns.
    pub fn start(
        threads: usize,
        capacity: usize,
        batch_max: usize,
        shadow: Arc<ShadowSlot>,
    ) -> (Inference, Workers) {
        let (tx, rx) = crossbeam_channel::bounded(capacity.max(1));
        let workers = (0..threads.max(1))
            .map(|i| {
                let (rx, shadow) = (rx.clone(), shadow.clone());
                std::thread::Builder::new()
                    .name(format!("edgedesk-nlu-{i}"))
                    .spawn(move || worker(rx, batch_max.max(1), &shadow))
                    .expect("spawning an inference thread")
            })
            .collect();
        (Inference { tx }, Workers(workers))
    }

    /// Classify `text` with `model` on an inference thread.
    pub async fn classify(
        &self,
        model: Arc<Model>,
        text: String,
    ) -> Result<Prediction, InferError> {
        let (reply, answer) = oneshot::channel();
        match self.tx.try_send(Job { model, text, reply }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(InferError::Busy),
            Err(TrySendError::Disconnected(_)) => return Err(InferError::Stopped),
        }
        answer.await.map_err(|_| InferError::Stopped)?
    }

    /// Turns waiting for a worker now.
    pub fn queued(&self) -> usize {
        self.tx.len()
    }
}

fn worker(rx: Receiver<Job>, batch_max: usize, shadow: &ShadowSlot) {
    let mut batch: Vec<Job> = Vec::with_capacity(batch_max);
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while batch.len() < batch_max {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        // Turns inside a flow may still use the model they started on: one
        // ONNX call per model present in the batch.
        while !batch.is_empty() {
            let model = batch[0].model.clone();
            let (mine, rest): (Vec<Job>, Vec<Job>) =
                batch.drain(..).partition(|j| Arc::ptr_eq(&j.model, &model));
            batch = rest;
            let candidate = shadow.active(edgedesk_support::now_ms());
            let texts: Vec<String> = match &candidate {
                Some(_) => mine.iter().map(|j| j.text.clone()).collect(),
                None => Vec::new(),
            };
            let started = std::time::Instant::now();
            let answered = run(&model, mine, candidate.is_some());
            let active_us = started.elapsed().as_micros() as u64;
            if let (Some(candidate), Some(predictions)) = (candidate, answered) {
                if rx.is_empty() {
                    compare(&candidate, &texts, &predictions, active_us);
                } else {
                    candidate.skip(texts.len());
                }
            }
        }
    }
}

/// Classify `texts` with the candidate the way the active model did (one
/// call, or one batch call) and count the comparison.
fn compare(candidate: &ShadowRun, texts: &[String], active: &[Prediction], active_us: u64) {
    let started = std::time::Instant::now();
    let predictions = if texts.len() == 1 {
        candidate.model.classify(&texts[0]).map(|p| vec![p])
    } else {
        candidate.model.classify_batch(texts)
    };
    match predictions {
        Ok(p) => candidate.compare(active, &p, active_us, started.elapsed().as_micros() as u64),
        Err(e) => {
            tracing::warn!(error = %e, "the shadow model failed on a batch");
            candidate.skip(texts.len());
        }
    }
}

/// Answer `jobs` with `model`; with `keep`, also return the predictions
/// (when all went well) for a shadow comparison.
fn run(model: &Model, jobs: Vec<Job>, keep: bool) -> Option<Vec<Prediction>> {
    if jobs.len() == 1 {
        let job = jobs.into_iter().next().expect("one job");
        let p = model.classify(&job.text);
        let kept = p.as_ref().ok().filter(|_| keep).map(|p| vec![p.clone()]);
        let _ = job.reply.send(p.map_err(InferError::from));
        return kept;
    }
    let (texts, replies): (Vec<String>, Vec<_>) =
        jobs.into_iter().map(|j| (j.text, j.reply)).unzip();
    match model.classify_batch(&texts) {
        Ok(predictions) => {
            let kept = keep.then(|| predictions.clone());
            for (reply, p) in replies.into_iter().zip(predictions) {
                let _ = reply.send(Ok(p));
            }
            kept
        }
        Err(e) => {
            let message = e.to_string();
            tracing::error!(error = %message, "batch classification failed");
            for reply in replies {
                let _ = reply.send(Err(InferError::Model(NluError::Onnx(message.clone()))));
            }
            None
        }
    }
}
