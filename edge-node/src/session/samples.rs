//! Learning samples: the visitor turns that taught the node something go up
//! to the controller, masked, for people to label (the learning loop).
//!
//! Which turns ([`reason`]): the model judged the text out of scope, or was
//! not confident enough to answer (the bot asked the visitor to rephrase, or
//! offered a person), the conversation escalated, or the visitor rated the
//! chat low. Each sample carries the model version, its top three guesses
//! with scores, and the language; the branch is the sending node.
//!
//! Budget: at most `learning.samples_per_day` a day (UTC) per node; beyond
//! it samples are dropped and counted (`edgedesk_samples_total{outcome}`).
//! The count lives in one atomic word, so the turn path never waits on it;
//! it starts again at zero when the node restarts. `learning.enabled =
//! false` opts the branch out: nothing is sent.

use std::sync::atomic::{AtomicU64, Ordering};

use edgedesk_common::event::SampleReason;

const DAY_MS: i64 = 86_400_000;

/// Why a turn with this outcome is worth a person's label, if it is.
pub fn reason(
    label: &str,
    answered: bool,
    out_of_scope_label: &str,
    escalated: bool,
    rated_low: bool,
    asked_to_rephrase: bool,
    cancelled: bool,
) -> Option<SampleReason> {
    if rated_low {
        Some(SampleReason::RatedLow)
    } else if escalated {
        Some(SampleReason::Escalated)
    } else if cancelled {
        Some(SampleReason::Cancelled)
    } else if label == out_of_scope_label {
        Some(SampleReason::OutOfScope)
    } else if asked_to_rephrase {
        Some(SampleReason::Rephrase)
    } else if !answered {
        Some(SampleReason::LowConfidence)
    } else {
        None
    }
}

/// A daily budget of samples, in one atomic word: the day (UTC) in the high
/// 32 bits, the samples taken that day in the low 32.
pub struct Budget {
    per_day: u32,
    word: AtomicU64,
}

impl Budget {
    pub fn new(per_day: u32) -> Budget {
        Budget {
            per_day,
            word: AtomicU64::new(0),
        }
    }

    /// Take one sample at `now_ms` if today's budget allows.
    pub fn take(&self, now_ms: i64) -> bool {
        let day = (now_ms.max(0) / DAY_MS) as u64;
        let mut current = self.word.load(Ordering::Relaxed);
        loop {
            let (d, used) = (current >> 32, current & 0xffff_ffff);
            let used = if d == day { used } else { 0 };
            if used >= u64::from(self.per_day) {
                return false;
            }
            let next = (day << 32) | (used + 1);
            match self.word.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(seen) => current = seen,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_in_order_of_what_they_teach() {
        let r = |label, answered, esc, low, rephrase| {
            reason(label, answered, "out_of_scope", esc, low, rephrase, false)
        };
        assert_eq!(
            r("card_arrival", true, false, false, false),
            None,
            "answered: nothing to learn"
        );
        assert_eq!(
            r("card_arrival", false, false, false, false),
            Some(SampleReason::LowConfidence)
        );
        assert_eq!(
            r("card_arrival", false, false, false, true),
            Some(SampleReason::Rephrase)
        );
        assert_eq!(
            r("out_of_scope", false, false, false, true),
            Some(SampleReason::OutOfScope)
        );
        assert_eq!(
            r("card_arrival", true, true, false, false),
            Some(SampleReason::Escalated)
        );
        assert_eq!(
            r("card_arrival", true, true, true, false),
            Some(SampleReason::RatedLow)
        );
        let cancel = |esc| {
            reason(
                "card_arrival",
                true,
                "out_of_scope",
                esc,
                false,
                false,
                true,
            )
        };
        assert_eq!(cancel(false), Some(SampleReason::Cancelled));
        assert_eq!(cancel(true), Some(SampleReason::Escalated));
    }

    #[test]
    fn the_daily_budget_holds_and_starts_again_the_next_day() {
        let b = Budget::new(3);
        let day1 = 20_000 * DAY_MS + 5;
        assert!((0..3).all(|_| b.take(day1)));
        assert!(!b.take(day1 + 1_000), "fourth sample of the day is dropped");
        assert!(b.take(day1 + DAY_MS), "a new day, a new budget");
        assert!(!Budget::new(0).take(day1), "a budget of 0 sends nothing");
        // Many threads never overspend.
        let b = std::sync::Arc::new(Budget::new(1_000));
        let taken: usize = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || (0..600).filter(|_| b.take(day1)).count())
            })
            .map(|t| t.join().unwrap())
            .sum();
        assert_eq!(taken, 1_000);
    }
}
