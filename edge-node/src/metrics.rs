//! Prometheus metrics of the node, served as text at `/metrics`.
//!
//! Counters with a label are [`ByLabel`]: looked up by `&str` without
//! allocating on the hot path (the label set is made once per value).

use std::collections::HashMap;
use std::sync::RwLock;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

/// A counter family with one label whose counters are found by value.
pub struct ByLabel {
    key: &'static str,
    family: Family<Labels, Counter>,
    cache: RwLock<HashMap<String, Counter>>,
}

impl ByLabel {
    fn new(key: &'static str) -> ByLabel {
        ByLabel {
            key,
            family: Family::default(),
            cache: RwLock::default(),
        }
    }

    /// The counter for `value`.
    pub fn get(&self, value: &str) -> Counter {
        if let Some(c) = self
            .cache
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(value)
        {
            return c.clone();
        }
        let c = self
            .family
            .get_or_create(&vec![(self.key.to_owned(), value.to_owned())])
            .clone();
        self.cache
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(value.to_owned(), c.clone());
        c
    }

    pub fn inc(&self, value: &str) {
        self.get(value).inc();
    }

    pub fn inc_by(&self, value: &str, n: u64) {
        self.get(value).inc_by(n);
    }
}

pub struct Metrics {
    registry: Registry,
    /// Open chat WebSockets.
    pub connections: Gauge,
    /// Sessions started, by `kind` = new | resumed.
    pub sessions: ByLabel,
    /// Chat lines, by `direction` = in | out.
    pub messages: ByLabel,
    /// Recognised intents (answered ones), by `intent`.
    pub intents: ByLabel,
    /// Turns NLU could not answer (low confidence or out of scope).
    pub unanswered: Counter,
    /// Turns the model bundle's first stage answered without the main model.
    pub nlu_first_stage: Counter,
    pub nlu_latency: Histogram,
    /// Time a turn waited for an inference thread (queue and hand-over).
    pub nlu_wait: Histogram,
    /// From a visitor frame to the stored, sent reply.
    pub turn_latency: Histogram,
    pub escalations: Counter,
    pub offline_messages: Counter,
    pub conversations_ended: ByLabel,
    /// Learning samples by reason, or `dropped_budget`.
    pub samples: ByLabel,
    /// Rejected input, by `reason` (too_large, invalid_json, rate_limited, …).
    pub rejected: ByLabel,
    pub outbox_depth: Gauge,
    /// Routine summaries dropped to keep the outbox within budget (total).
    pub outbox_compacted: Gauge,
    /// 1 while connected to the broker.
    pub uplink_connected: Gauge,
    pub uplink_sent: Counter,
    pub uplink_acked: Counter,
    /// Messages from the broker refused, by reason.
    pub uplink_refused: ByLabel,
    /// Commands held back because an earlier one of their stream was missing.
    pub command_gaps: Counter,
    /// Model updates and rollbacks, by outcome (updated, rolled_back, refused, fetch, verify, golden_set, …).
    pub model_changes: ByLabel,
    /// Turns refused because the model was busy (inference queue full).
    pub shed: Counter,
}

impl Metrics {
    pub fn model_change(&self, outcome: &str) {
        self.model_changes.inc(outcome);
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("edgedesk");
        let m = Metrics {
            connections: Gauge::default(),
            sessions: ByLabel::new("kind"),
            messages: ByLabel::new("direction"),
            intents: ByLabel::new("intent"),
            unanswered: Counter::default(),
            nlu_first_stage: Counter::default(),
            // 10 µs to 116 ms in steps of √2: a model with the sentence
            // encoder takes 3–15 ms, where steps of 2 would say little.
            nlu_latency: Histogram::new(exponential_buckets(0.00001, std::f64::consts::SQRT_2, 28)),
            // 10 µs to 1.3 s (`nlu.max_wait_ms` is 1 s by default).
            nlu_wait: Histogram::new(exponential_buckets(0.00001, 2.0, 18)),
            turn_latency: Histogram::new(exponential_buckets(0.0001, 2.0, 14)),
            escalations: Counter::default(),
            offline_messages: Counter::default(),
            conversations_ended: ByLabel::new("reason"),
            samples: ByLabel::new("outcome"),
            rejected: ByLabel::new("reason"),
            outbox_depth: Gauge::default(),
            outbox_compacted: Gauge::default(),
            uplink_connected: Gauge::default(),
            uplink_sent: Counter::default(),
            uplink_acked: Counter::default(),
            uplink_refused: ByLabel::new("reason"),
            command_gaps: Counter::default(),
            model_changes: ByLabel::new("outcome"),
            shed: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "ws_connections",
            "Open chat WebSocket connections",
            m.connections.clone(),
        );
        registry.register(
            "sessions",
            "Chat sessions started, by kind (new, resumed)",
            m.sessions.family.clone(),
        );
        registry.register(
            "messages",
            "Chat messages, by direction (in, out)",
            m.messages.family.clone(),
        );
        registry.register(
            "intents",
            "Answered intents, by intent",
            m.intents.family.clone(),
        );
        registry.register(
            "nlu_unanswered",
            "Turns below the confidence threshold or out of scope",
            m.unanswered.clone(),
        );
        registry.register(
            "nlu_first_stage",
            "Turns the model's first stage (n-gram features alone) answered without the sentence encoder",
            m.nlu_first_stage.clone(),
        );
        registry.register(
            "nlu_latency_seconds",
            "Intent classification time per utterance on an inference thread (without the wait for one)",
            m.nlu_latency.clone(),
        );
        registry.register(
            "nlu_wait_seconds",
            "Time a turn waited for an inference thread before its classification",
            m.nlu_wait.clone(),
        );
        registry.register(
            "turn_latency_seconds",
            "Visitor message to stored and sent reply",
            m.turn_latency.clone(),
        );
        registry.register(
            "escalations",
            "Conversations escalated to a person",
            m.escalations.clone(),
        );
        registry.register(
            "offline_messages",
            "Offline messages left by visitors",
            m.offline_messages.clone(),
        );
        registry.register(
            "conversations_ended",
            "Conversations ended, by reason",
            m.conversations_ended.family.clone(),
        );
        registry.register(
            "samples",
            "Learning samples sent up for labelling, by reason, or dropped over the daily budget",
            m.samples.family.clone(),
        );
        registry.register(
            "rejected_inputs",
            "Rejected visitor input, by reason",
            m.rejected.family.clone(),
        );
        registry.register(
            "outbox_depth",
            "Events waiting in the outbox for the cloud",
            m.outbox_depth.clone(),
        );
        registry.register(
            "outbox_compacted",
            "Routine summaries dropped to keep the outbox within its budget",
            m.outbox_compacted.clone(),
        );
        registry.register(
            "uplink_connected",
            "1 while connected to the cloud broker",
            m.uplink_connected.clone(),
        );
        registry.register(
            "uplink_events_sent",
            "Events sent to the controller (including resends)",
            m.uplink_sent.clone(),
        );
        registry.register(
            "uplink_events_acked",
            "Events acknowledged by the controller and deleted",
            m.uplink_acked.clone(),
        );
        registry.register(
            "uplink_refused",
            "Messages from the broker refused, by reason",
            m.uplink_refused.family.clone(),
        );
        registry.register(
            "model_changes",
            "Model updates and rollbacks, by outcome",
            m.model_changes.family.clone(),
        );
        registry.register(
            "turns_shed",
            "Visitor turns answered `busy` because the model's queue was full",
            m.shed.clone(),
        );
        registry.register(
            "uplink_command_gaps",
            "Commands held back until an earlier one of their stream arrived",
            m.command_gaps.clone(),
        );
        // Publish every rejection reason at zero so rates exist before the first event.
        for reason in [
            "too_large",
            "invalid_json",
            "unknown_type",
            "binary_not_supported",
            "empty_message",
            "rate_limited",
            "unknown_session",
            "unsupported_version",
            "hello_required",
            "internal",
            "origin",
            "too_many_connections",
            "per_address",
            "descriptors",
            "flood",
            "protocol",
            "busy",
        ] {
            let _ = m.rejected.get(reason);
        }
        Metrics { registry, ..m }
    }

    pub fn reject(&self, reason: &str) {
        self.rejected.inc(reason);
    }

    pub fn session(&self, kind: &str) {
        self.sessions.inc(kind);
    }

    pub fn message(&self, direction: &str, n: u64) {
        self.messages.inc_by(direction, n);
    }

    pub fn intent(&self, intent: &str) {
        self.intents.inc(intent);
    }

    pub fn ended(&self, reason: &str) {
        self.conversations_ended.inc(reason);
    }

    pub fn sample(&self, outcome: &str) {
        self.samples.inc(outcome);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
