//! Intent classification off the async workers.
//!
//! A few OS threads (`nlu.sessions`) run ONNX Runtime; a visitor's turn hands
//! its text to them through a bounded queue and awaits the answer, so a slow
//! or contended model never blocks a tokio worker. Under load a worker takes
//! whatever has queued up (at most `nlu.batch_max`) and classifies it in one
//! ONNX Runtime call.
//!
//! Queue policy: bounded (`nlu.queue_capacity`). When it is full the turn is
//! refused at once with `busy` — load is shed at the door instead of queueing
//! without bound (which lowered throughput for everyone) — and the page
//! offers to send again. Nothing is stored for a refused turn.

use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use edgedesk_nlu::{Model, NluError, Prediction};
use tokio::sync::oneshot;

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
    pub fn start(threads: usize, capacity: usize, batch_max: usize) -> (Inference, Workers) {
        let (tx, rx) = crossbeam_channel::bounded(capacity.max(1));
        let workers = (0..threads.max(1))
            .map(|i| {
                let rx = rx.clone();
                std::thread::Builder::new()
                    .name(format!("edgedesk-nlu-{i}"))
                    .spawn(move || worker(rx, batch_max.max(1)))
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

fn worker(rx: Receiver<Job>, batch_max: usize) {
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
            run(&model, mine);
        }
    }
}

fn run(model: &Model, jobs: Vec<Job>) {
    if jobs.len() == 1 {
        let job = jobs.into_iter().next().expect("one job");
        let _ = job
            .reply
            .send(model.classify(&job.text).map_err(InferError::from));
        return;
    }
    let (texts, replies): (Vec<String>, Vec<_>) =
        jobs.into_iter().map(|j| (j.text, j.reply)).unzip();
    match model.classify_batch(&texts) {
        Ok(predictions) => {
            for (reply, p) in replies.into_iter().zip(predictions) {
                let _ = reply.send(Ok(p));
            }
        }
        Err(e) => {
            let message = e.to_string();
            tracing::error!(error = %message, "batch classification failed");
            for reply in replies {
                let _ = reply.send(Err(InferError::Model(NluError::Onnx(message.clone()))));
            }
        }
    }
}
