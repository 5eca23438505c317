//! Intent classification off the async workers.
//!
//! A few OS threads (`nlu.sessions`) run ONNX Runtime; a visitor's turn hands
//! its text to them through a bounded queue and awaits the answer, so a slow
//! or contended model never blocks a tokio worker. Under load a worker takes
//! whatever has queued up (at most `nlu.batch_max`) and classifies it in one
//! ONNX Runtime call (a model with the sentence encoder runs each text of
//! the batch alone; see `edgedesk_nlu::Model`).
//!
//! Queue policy: bounded in turns (`nlu.queue_capacity`) and in time
//! (`nlu.max_wait_ms`): a turn is refused at once with `busy` when the queue
//! is full, or when the turns ahead of it would take longer than that to
//! classify at the pace the workers have kept lately ([`Admission`]). Load is
//! shed at the door instead of queueing without bound (which lowered
//! throughput for everyone), and the page offers to send again. Nothing is
//! stored for a refused turn. The time bound matters for a model with the
//! sentence encoder: 1,024 turns at 5 ms are five seconds of waiting.
//!
//! Shadow mode: after a batch is answered, a candidate model in shadow
//! ([`crate::models::shadow`]) classifies the same texts and the two are
//! compared — unless turns are waiting, in which case the batch is skipped
//! (counted), so shadow work never delays a visitor's turn that is queued.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

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
    reply: oneshot::Sender<Result<Classified, InferError>>,
}

/// A turn's answer and what it cost on the inference thread (its share of
/// the ONNX Runtime call), apart from the time it waited in the queue.
#[derive(Debug)]
pub struct Classified {
    pub prediction: Prediction,
    pub compute: Duration,
}

/// Handle to the inference threads; cheap to clone. The threads stop when
/// every handle is gone.
#[derive(Clone)]
pub struct Inference {
    tx: Sender<Job>,
    admission: Arc<Admission>,
}

/// Whether one more turn may queue: the turns ahead of it, at the recent
/// cost of a turn spread over the workers, must be done within the wait
/// bound. I/O-free; the workers report what their calls took.
#[derive(Debug)]
pub struct Admission {
    threads: u64,
    max_wait_us: u64,
    /// Moving average of one turn's classification time (µs); 0 until the
    /// first call, when only the queue's capacity bounds it.
    per_turn_us: AtomicU64,
}

impl Admission {
    /// `max_wait` of zero turns the time bound off.
    pub fn new(threads: usize, max_wait: Duration) -> Admission {
        Admission {
            threads: threads.max(1) as u64,
            max_wait_us: max_wait.as_micros() as u64,
            per_turn_us: AtomicU64::new(0),
        }
    }

    /// May a turn queue behind `queued` others?
    pub fn admits(&self, queued: usize) -> bool {
        let ahead = (queued as u64 + 1) * self.per_turn_us.load(Ordering::Relaxed);
        self.max_wait_us == 0 || ahead / self.threads <= self.max_wait_us
    }

    /// A call classified `turns` turns in `elapsed`: move the average an
    /// eighth of the way (a racing update from another worker may be lost,
    /// which an average can bear).
    pub fn observe(&self, turns: usize, elapsed: Duration) {
        if turns == 0 {
            return;
        }
        let sample = elapsed.as_micros() as u64 / turns as u64;
        let old = self.per_turn_us.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            (old * 7 + sample) / 8
        };
        self.per_turn_us.store(new, Ordering::Relaxed);
    }

    /// What a turn costs now, as the bound reckons it.
    pub fn per_turn(&self) -> Duration {
        Duration::from_micros(self.per_turn_us.load(Ordering::Relaxed))
    }
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
    /// Start `threads` workers behind a queue of `capacity` turns that a
    /// turn joins only if it would wait at most `max_wait` (zero: no bound).
    pub fn start(
        threads: usize,
        capacity: usize,
        batch_max: usize,
        max_wait: Duration,
        shadow: Arc<ShadowSlot>,
    ) -> (Inference, Workers) {
        let (tx, rx) = crossbeam_channel::bounded(capacity.max(1));
        let admission = Arc::new(Admission::new(threads, max_wait));
        let workers = (0..threads.max(1))
            .map(|i| {
                let (rx, shadow, admission) = (rx.clone(), shadow.clone(), admission.clone());
                std::thread::Builder::new()
                    .name(format!("edgedesk-nlu-{i}"))
                    .spawn(move || worker(rx, batch_max.max(1), &shadow, &admission))
                    .expect("spawning an inference thread")
            })
            .collect();
        (Inference { tx, admission }, Workers(workers))
    }

    /// Classify `text` with `model` on an inference thread.
    pub async fn classify(
        &self,
        model: Arc<Model>,
        text: String,
    ) -> Result<Classified, InferError> {
        if !self.admission.admits(self.tx.len()) {
            return Err(InferError::Busy);
        }
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

fn worker(rx: Receiver<Job>, batch_max: usize, shadow: &ShadowSlot, admission: &Admission) {
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
            let turns = mine.len();
            let answered = run(&model, mine, candidate.is_some());
            let took = started.elapsed();
            admission.observe(turns, took);
            let active_us = took.as_micros() as u64;
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
    let started = std::time::Instant::now();
    if jobs.len() == 1 {
        let job = jobs.into_iter().next().expect("one job");
        let p = model.classify(&job.text);
        let compute = started.elapsed();
        let kept = p.as_ref().ok().filter(|_| keep).map(|p| vec![p.clone()]);
        let _ = job.reply.send(
            p.map(|prediction| Classified {
                prediction,
                compute,
            })
            .map_err(InferError::from),
        );
        return kept;
    }
    let (texts, replies): (Vec<String>, Vec<_>) =
        jobs.into_iter().map(|j| (j.text, j.reply)).unzip();
    match model.classify_batch(&texts) {
        Ok(predictions) => {
            let compute = started.elapsed() / texts.len() as u32;
            let kept = keep.then(|| predictions.clone());
            for (reply, prediction) in replies.into_iter().zip(predictions) {
                let _ = reply.send(Ok(Classified {
                    prediction,
                    compute,
                }));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn before_any_turn_only_the_capacity_bounds_the_queue() {
        let a = Admission::new(1, ms(1000));
        assert!(a.admits(100_000));
    }

    #[test]
    fn a_slow_model_queues_only_what_it_can_answer_within_the_bound() {
        // The encoder at 5 ms a turn on two workers: 400 turns are a second.
        let a = Admission::new(2, ms(1000));
        a.observe(1, ms(5));
        assert!(a.admits(399), "the 400th turn waits exactly 1 s");
        assert!(!a.admits(400), "the 401st would wait longer");
    }

    #[test]
    fn a_fast_model_is_bounded_by_the_capacity_alone() {
        // The linear model at 0.2 ms: 1,024 queued turns are 205 ms.
        let a = Admission::new(1, ms(1000));
        a.observe(32, Duration::from_micros(32 * 200));
        assert!(a.admits(1024));
    }

    #[test]
    fn zero_turns_the_time_bound_off() {
        let a = Admission::new(1, Duration::ZERO);
        a.observe(1, ms(500));
        assert!(a.admits(1_000_000));
    }

    #[test]
    fn the_cost_follows_the_model_as_it_changes() {
        let a = Admission::new(1, ms(1000));
        a.observe(1, ms(5));
        // A swap to the linear model: the average falls toward 0.2 ms
        // rather than jumping, and a batch counts per turn.
        for _ in 0..40 {
            a.observe(10, ms(2));
        }
        assert!(
            a.per_turn() < Duration::from_micros(250),
            "{:?}",
            a.per_turn()
        );
        a.observe(0, ms(100));
        assert!(
            a.per_turn() < Duration::from_micros(250),
            "an empty call counts for nothing"
        );
    }
}
