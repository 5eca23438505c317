//! The node's half of edge sync as an I/O-free state machine (the way
//! rumqttc keeps `MqttState` apart from its event loop): methods take what
//! happened and the time, and say what to do; the driver does it.
//!
//! Outbox: one batch in flight at a time. It is sent, then waits for the
//! controller's `events_ack` (sent after its commit) until a deadline; ids
//! acknowledged are deleted (late acks of an earlier send count too); at the
//! deadline, or after a reconnect, whatever is still in the outbox goes
//! again. The controller stores each event id once, so resending is safe.
//!
//! Command streams: commands of one stream run in `seq` order. A command
//! after a gap is held back (not acknowledged) and the node asks for the
//! pending commands again — at most once per `resend_interval`, so a burst
//! behind one lost line asks once.

use std::collections::BTreeSet;

use edgedesk_common::sync::Stream;

/// What the outbox drain should do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// No link: wait until it is up.
    WaitForLink,
    /// Read the oldest events and send them.
    Send,
    /// A batch is in flight: wait for acknowledgements until `deadline` (ms).
    WaitForAcks { deadline: i64 },
}

/// How to treat a command of a stream that was not executed before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// The next in its stream (or not in a stream): run it.
    Run,
    /// An earlier one is missing: hold it back; ask for a resend if `ask`.
    Hold { ask: bool },
    /// Its stream has moved past it: acknowledge without running it.
    Superseded,
}

/// The outbox drain's state: the batch in flight, if any.
#[derive(Debug, Clone)]
pub struct Outbox {
    ack_timeout_ms: i64,
    connected: bool,
    in_flight: Option<InFlight>,
    /// Batches sent again after a deadline or a reconnect (for metrics).
    pub resends: u64,
}

/// Command streams' state: when the node last asked for a resend.
#[derive(Debug, Clone)]
pub struct Streams {
    resend_interval_ms: i64,
    last_resend_ask: Option<i64>,
}

#[derive(Debug, Clone)]
struct InFlight {
    waiting: BTreeSet<String>,
    deadline: i64,
}

impl Outbox {
    pub fn new(ack_timeout_ms: i64) -> Outbox {
        Outbox {
            ack_timeout_ms,
            connected: false,
            in_flight: None,
            resends: 0,
        }
    }

    /// The link came up or went down. What was in flight on a dropped link
    /// is sent again once it is back.
    pub fn link(&mut self, up: bool) {
        self.connected = up;
        if !up && self.in_flight.take().is_some() {
            self.resends += 1;
        }
    }

    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// What to do now.
    pub fn next(&mut self, now: i64) -> Next {
        if !self.connected {
            return Next::WaitForLink;
        }
        match &self.in_flight {
            Some(f) if now < f.deadline => Next::WaitForAcks {
                deadline: f.deadline,
            },
            Some(_) => {
                // No (complete) acknowledgement in time: send again.
                self.in_flight = None;
                self.resends += 1;
                Next::Send
            }
            None => Next::Send,
        }
    }

    /// A batch with these event ids was published at `now`.
    pub fn sent(&mut self, ids: impl IntoIterator<Item = String>, now: i64) {
        let waiting: BTreeSet<String> = ids.into_iter().collect();
        if !waiting.is_empty() {
            self.in_flight = Some(InFlight {
                waiting,
                deadline: now + self.ack_timeout_ms,
            });
        }
    }

    /// The controller acknowledged `ids` (stored for good): they may be
    /// deleted. Returns `true` when this completes the batch in flight.
    pub fn acked(&mut self, ids: &[String]) -> bool {
        let Some(f) = self.in_flight.as_mut() else {
            return false;
        };
        for id in ids {
            f.waiting.remove(id);
        }
        if f.waiting.is_empty() {
            self.in_flight = None;
            true
        } else {
            false
        }
    }
}

impl Streams {
    pub fn new(resend_interval_ms: i64) -> Streams {
        Streams {
            resend_interval_ms,
            last_resend_ask: None,
        }
    }

    /// Decide about a command not executed before; `last` is the last seq
    /// executed in its stream (0 if none).
    pub fn admit(&mut self, stream: Option<&Stream>, last: u64, now: i64) -> Admit {
        let Some(s) = stream else {
            return Admit::Run;
        };
        if s.seq <= last {
            return Admit::Superseded;
        }
        if s.seq == last + 1 {
            return Admit::Run;
        }
        let ask = self
            .last_resend_ask
            .is_none_or(|t| now - t >= self.resend_interval_ms);
        if ask {
            self.last_resend_ask = Some(now);
        }
        Admit::Hold { ask }
    }
}

#[cfg(test)]
mod tests;
