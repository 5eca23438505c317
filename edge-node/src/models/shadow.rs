//! Shadow mode: a candidate model classifies live turns beside the active
//! one and answers nobody. The inference threads, after replying with the
//! active model's predictions, run the same texts through the candidate and
//! count here how often the two agree, how their confidence differs, where
//! one would answer and the other not, and what each cost. Heartbeats report
//! the counts ([`ShadowReport`]); the controller's rollout gate judges them.
//!
//! Load policy: shadow work yields. When turns are waiting for an inference
//! thread, a batch is not shadowed (counted as `skipped`), so the candidate
//! never slows a visitor's answer beyond the batch being finished.
//! A run ends by itself at its deadline; a new run replaces the old one.

use std::sync::{Arc, Mutex, RwLock};

use edgedesk_common::sync::ShadowReport;
use edgedesk_nlu::{Model, Prediction};

/// One candidate in shadow.
pub struct ShadowRun {
    pub model: Arc<Model>,
    /// Stop comparing after this (ms since the epoch).
    pub until_ms: i64,
    report: Mutex<ShadowReport>,
}

impl ShadowRun {
    pub fn new(model: Model, rollout: &str, until_ms: i64) -> ShadowRun {
        let version = model.manifest().version.to_string();
        ShadowRun {
            model: Arc::new(model),
            until_ms,
            report: Mutex::new(ShadowReport {
                rollout: rollout.to_owned(),
                version,
                ..Default::default()
            }),
        }
    }

    /// Count one batch: the active model's and the candidate's predictions
    /// for the same texts, and the time each took for the whole batch.
    pub fn compare(
        &self,
        active: &[Prediction],
        candidate: &[Prediction],
        active_us: u64,
        candidate_us: u64,
    ) {
        let mut r = self.report.lock().unwrap_or_else(|p| p.into_inner());
        tally(&mut r, active, candidate, active_us, candidate_us);
    }

    /// Turns left out because the node was busy.
    pub fn skip(&self, n: usize) {
        self.report
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .skipped += n as u64;
    }

    pub fn report(&self) -> ShadowReport {
        self.report
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The candidate in shadow, if any. Readers clone the `Arc`; the lock is
/// held for that alone.
#[derive(Default)]
pub struct ShadowSlot {
    run: RwLock<Option<Arc<ShadowRun>>>,
    /// The last run's final counts, kept after its model is dropped.
    finished: Mutex<Option<ShadowReport>>,
}

impl ShadowSlot {
    /// The run to compare against at `now_ms`. A run whose time is up is
    /// ended here: its counts are kept, its model dropped.
    pub fn active(&self, now_ms: i64) -> Option<Arc<ShadowRun>> {
        let run = self.run.read().unwrap_or_else(|p| p.into_inner()).clone()?;
        if now_ms < run.until_ms {
            return Some(run);
        }
        let mut slot = self.run.write().unwrap_or_else(|p| p.into_inner());
        if slot.as_ref().is_some_and(|r| Arc::ptr_eq(r, &run)) {
            *self.finished.lock().unwrap_or_else(|p| p.into_inner()) = Some(run.report());
            *slot = None;
            tracing::info!(version = %run.report().version, "shadow run ended");
        }
        None
    }

    /// End the run of `rollout` now, if it is the one running (its counts
    /// are kept). Whether one was ended.
    pub fn end(&self, rollout: &str) -> bool {
        let mut slot = self.run.write().unwrap_or_else(|p| p.into_inner());
        let Some(run) = slot.as_ref().filter(|r| r.report().rollout == rollout) else {
            return false;
        };
        *self.finished.lock().unwrap_or_else(|p| p.into_inner()) = Some(run.report());
        *slot = None;
        true
    }

    /// Start `run`, replacing any other.
    pub fn start(&self, run: ShadowRun) {
        *self.run.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(run));
    }

    /// The latest run's counts, also after it ended (the controller reads
    /// the final figures from the next heartbeats).
    pub fn report(&self, now_ms: i64) -> Option<ShadowReport> {
        match self.active(now_ms) {
            Some(r) => Some(r.report()),
            None => self
                .finished
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }
}

/// Add one batch's comparison to `r`.
fn tally(
    r: &mut ShadowReport,
    active: &[Prediction],
    candidate: &[Prediction],
    active_us: u64,
    candidate_us: u64,
) {
    for (a, c) in active.iter().zip(candidate) {
        r.turns += 1;
        r.agreed += u64::from(a.label == c.label);
        r.oos_disagreements += u64::from(a.answered != c.answered);
        r.confidence_delta_sum += f64::from(c.confidence - a.confidence);
    }
    r.active_us += active_us;
    r.candidate_us += candidate_us;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(label: &str, confidence: f32, answered: bool) -> Prediction {
        Prediction {
            label: label.into(),
            confidence,
            answered,
            runners_up: [None; 2],
            first_stage: false,
        }
    }

    #[test]
    fn counts_agreement_out_of_scope_disagreements_and_cost() {
        let mut r = ShadowReport::default();
        let active = [
            p("card_arrival", 0.9, true),
            p("out_of_scope", 0.8, false),
            p("pin_blocked", 0.5, true),
        ];
        let candidate = [
            p("card_arrival", 0.7, true),
            p("top_up_failed", 0.6, true),
            p("pin_blocked", 0.2, false),
        ];
        tally(&mut r, &active, &candidate, 300, 900);
        assert_eq!((r.turns, r.agreed, r.oos_disagreements), (3, 2, 2));
        assert!(
            (r.confidence_delta_sum - (-0.2 - 0.2 - 0.3)).abs() < 1e-6,
            "{}",
            r.confidence_delta_sum
        );
        assert_eq!((r.active_us, r.candidate_us), (300, 900));
        tally(&mut r, &active[..1], &candidate[..1], 100, 100);
        assert_eq!((r.turns, r.agreed), (4, 3));
    }
}
