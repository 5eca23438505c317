//! Which connection holds which session, and how to reach it.
//!
//! A session is held by at most one connection: a newer one (a reload, a
//! second tab) takes it over and the older is told to close. Agent actions
//! for a conversation reach the holding connection through its bounded
//! channel (16; when full, the sender waits — agent lines are never dropped).
//! Events travel boxed: an idle connection's channel then costs a few
//! hundred bytes instead of a block of full-size slots.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::AgentEvent;

/// A connection's hold on a session.
#[derive(Debug, Clone)]
pub struct Claim {
    pub number: u64,
    /// Cancelled when another connection takes the session over.
    pub token: CancellationToken,
}

struct Holder {
    number: u64,
    token: CancellationToken,
    tx: mpsc::Sender<Box<AgentEvent>>,
}

/// Capacity of each connection's agent-action channel.
pub const AGENT_QUEUE: usize = 16;

#[derive(Default)]
pub struct Registry {
    // Design: a std mutex held only for map operations, never across an
    // await; lookups are a hash probe.
    live: Mutex<HashMap<String, Holder>>,
    claims: AtomicU64,
}

impl Registry {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Holder>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Register `session` as held by a new connection, closing any older holder.
    pub fn claim(&self, session: &str) -> (Claim, mpsc::Receiver<Box<AgentEvent>>) {
        let claim = Claim {
            number: self.claims.fetch_add(1, Ordering::Relaxed),
            token: CancellationToken::new(),
        };
        let (tx, rx) = mpsc::channel(AGENT_QUEUE);
        let holder = Holder {
            number: claim.number,
            token: claim.token.clone(),
            tx,
        };
        if let Some(previous) = self.map().insert(session.to_owned(), holder) {
            previous.token.cancel();
        }
        (claim, rx)
    }

    /// Forget `session` if `claim` still holds it; `true` if it did (the
    /// visitor left rather than moved to another window).
    pub fn release(&self, session: &str, claim: &Claim) -> bool {
        let mut live = self.map();
        if live.get(session).is_some_and(|l| l.number == claim.number) {
            live.remove(session);
            return true;
        }
        false
    }

    /// The channel to the connection holding `session`, if any.
    pub fn sender(&self, session: &str) -> Option<mpsc::Sender<Box<AgentEvent>>> {
        self.map().get(session).map(|l| l.tx.clone())
    }

    pub fn is_live(&self, session: &str) -> bool {
        self.map().contains_key(session)
    }

    pub fn len(&self) -> usize {
        self.map().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Offer `make()` to every live connection without waiting (a full
    /// channel skips that connection: for ephemeral notices only).
    pub fn broadcast(&self, make: impl Fn() -> AgentEvent) {
        for holder in self.map().values() {
            let _ = holder.tx.try_send(Box::new(make()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newer_claim_takes_over_and_only_the_holder_releases() {
        let r = Registry::default();
        let (first, _rx1) = r.claim("s");
        let (second, _rx2) = r.claim("s");
        assert!(
            first.token.is_cancelled(),
            "the older connection is told to go"
        );
        assert!(!second.token.is_cancelled());
        r.release("s", &first);
        assert!(
            r.is_live("s"),
            "a stale release does not drop the new holder"
        );
        r.release("s", &second);
        assert!(!r.is_live("s"));
        assert!(r.is_empty());
    }
}
