//! Prometheus metrics of the node, served as text at `/metrics`.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

pub struct Metrics {
    registry: Registry,
    /// Open chat WebSockets.
    pub connections: Gauge,
    /// Sessions started, by `kind` = new | resumed.
    pub sessions: Family<Labels, Counter>,
    /// Chat lines, by `direction` = in | out.
    pub messages: Family<Labels, Counter>,
    /// Recognised intents (answered ones), by `intent`.
    pub intents: Family<Labels, Counter>,
    /// Turns NLU could not answer (low confidence or out of scope).
    pub unanswered: Counter,
    pub nlu_latency: Histogram,
    /// From a visitor frame to the stored, sent reply.
    pub turn_latency: Histogram,
    pub escalations: Counter,
    pub offline_messages: Counter,
    pub conversations_ended: Family<Labels, Counter>,
    /// Rejected input, by `reason` (too_large, invalid_json, rate_limited, …).
    pub rejected: Family<Labels, Counter>,
    pub outbox_depth: Gauge,
    /// Routine summaries dropped to keep the outbox within budget (total).
    pub outbox_compacted: Gauge,
    /// 1 while connected to the broker.
    pub uplink_connected: Gauge,
    pub uplink_sent: Counter,
    pub uplink_acked: Counter,
    /// Messages from the broker refused, by reason.
    pub uplink_refused: Family<Labels, Counter>,
    /// Commands held back because an earlier one of their stream was missing.
    pub command_gaps: Counter,
    /// Model updates and rollbacks, by outcome (updated, rolled_back, refused, fetch, verify, golden_set, …).
    pub model_changes: Family<Labels, Counter>,
}

impl Metrics {
    pub fn model_change(&self, outcome: &str) {
        self.model_changes
            .get_or_create(&label("outcome", outcome))
            .inc();
    }
}

fn label(k: &str, v: &str) -> Labels {
    vec![(k.to_owned(), v.to_owned())]
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("edgedesk");
        let m = Metrics {
            connections: Gauge::default(),
            sessions: Family::default(),
            messages: Family::default(),
            intents: Family::default(),
            unanswered: Counter::default(),
            nlu_latency: Histogram::new(exponential_buckets(0.00001, 2.0, 14)),
            turn_latency: Histogram::new(exponential_buckets(0.0001, 2.0, 14)),
            escalations: Counter::default(),
            offline_messages: Counter::default(),
            conversations_ended: Family::default(),
            rejected: Family::default(),
            outbox_depth: Gauge::default(),
            outbox_compacted: Gauge::default(),
            uplink_connected: Gauge::default(),
            uplink_sent: Counter::default(),
            uplink_acked: Counter::default(),
            uplink_refused: Family::default(),
            command_gaps: Counter::default(),
            model_changes: Family::default(),
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
            m.sessions.clone(),
        );
        registry.register(
            "messages",
            "Chat messages, by direction (in, out)",
            m.messages.clone(),
        );
        registry.register("intents", "Answered intents, by intent", m.intents.clone());
        registry.register(
            "nlu_unanswered",
            "Turns below the confidence threshold or out of scope",
            m.unanswered.clone(),
        );
        registry.register(
            "nlu_latency_seconds",
            "Intent classification time per utterance",
            m.nlu_latency.clone(),
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
            m.conversations_ended.clone(),
        );
        registry.register(
            "rejected_inputs",
            "Rejected visitor input, by reason",
            m.rejected.clone(),
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
            m.uplink_refused.clone(),
        );
        registry.register(
            "model_changes",
            "Model updates and rollbacks, by outcome",
            m.model_changes.clone(),
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
            "flood",
            "protocol",
        ] {
            let _ = m.rejected.get_or_create(&label("reason", reason));
        }
        Metrics { registry, ..m }
    }

    pub fn reject(&self, reason: &str) {
        self.rejected.get_or_create(&label("reason", reason)).inc();
    }

    pub fn session(&self, kind: &str) {
        self.sessions.get_or_create(&label("kind", kind)).inc();
    }

    pub fn message(&self, direction: &str, n: u64) {
        self.messages
            .get_or_create(&label("direction", direction))
            .inc_by(n);
    }

    pub fn intent(&self, intent: &str) {
        self.intents.get_or_create(&label("intent", intent)).inc();
    }

    pub fn ended(&self, reason: &str) {
        self.conversations_ended
            .get_or_create(&label("reason", reason))
            .inc();
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
