//! Prometheus metrics of the controller (`/metrics`).

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

pub struct Metrics {
    registry: Registry,
    /// Envelopes refused, by reason (signature, replay, revoked, unknown_node, …).
    pub refused: Family<Labels, Counter>,
    pub events_new: Counter,
    pub events_duplicate: Counter,
    pub events_foreign: Counter,
    pub heartbeats: Counter,
    pub nodes_online: Gauge,
    pub commands_sent: Counter,
    pub commands_acked: Counter,
    /// Inbound messages dropped because processing was behind (nodes resend).
    pub inbound_dropped: Counter,
    /// Broker connections and packets the gate refused, by reason.
    pub broker_refused_by: Family<Labels, Counter>,
    /// Times the gate paused reading from a node over its message rate.
    pub broker_throttled: Counter,
    /// Bundle bytes served over QUIC.
    pub model_bytes_sent: Counter,
    /// Messages for nodes dropped because the publisher was behind (stored
    /// commands go again with the next resend).
    pub outgoing_dropped: Counter,
    /// Inputs to the live-chat desk dropped because it was behind.
    pub handoff_dropped: Counter,
    /// Frames a standby relayed to the active controller (`link::relay`).
    pub relay_sent: Counter,
    /// Frames a standby dropped (its relay queue full, or the database
    /// did not take them); the nodes resend.
    pub relay_dropped: Counter,
    /// Frames the active controller received from standbys.
    pub relay_received: Counter,
    /// Requests a standby forwarded to the active controller, by kind
    /// (http, websocket) or refused (unavailable).
    pub forwarded: Family<Labels, Counter>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("edgedesk_controller");
        let refused = Family::<Labels, Counter>::default();
        let events_new = Counter::default();
        let events_duplicate = Counter::default();
        let events_foreign = Counter::default();
        let heartbeats = Counter::default();
        let nodes_online = Gauge::default();
        let commands_sent = Counter::default();
        let commands_acked = Counter::default();
        let inbound_dropped = Counter::default();
        let model_bytes_sent = Counter::default();
        let outgoing_dropped = Counter::default();
        let handoff_dropped = Counter::default();
        let (relay_sent, relay_dropped, relay_received) =
            (Counter::default(), Counter::default(), Counter::default());
        registry.register(
            "relay_sent",
            "Frames this standby relayed to the active controller (mqtt.shared_group)",
            relay_sent.clone(),
        );
        registry.register(
            "relay_dropped",
            "Frames this standby could not relay (the nodes resend)",
            relay_dropped.clone(),
        );
        registry.register(
            "relay_received",
            "Frames the active controller received from standbys",
            relay_received.clone(),
        );
        let forwarded = Family::<Labels, Counter>::default();
        registry.register(
            "forwarded",
            "Requests this standby forwarded to the active controller, by kind (http, websocket; unavailable: none answered)",
            forwarded.clone(),
        );
        let broker_refused_by = Family::<Labels, Counter>::default();
        let broker_throttled = Counter::default();
        registry.register(
            "broker_refused",
            "Broker connections and packets the gate refused, by reason (login, acl, not_connect, connections)",
            broker_refused_by.clone(),
        );
        registry.register(
            "broker_throttled",
            "Times the broker gate paused reading from a node over mqtt.max_messages_per_sec",
            broker_throttled.clone(),
        );
        registry.register(
            "outgoing_dropped",
            "Messages for nodes dropped while the publisher was behind (commands are resent)",
            outgoing_dropped.clone(),
        );
        registry.register(
            "handoff_dropped",
            "Live-chat inputs dropped while the desk was behind",
            handoff_dropped.clone(),
        );
        registry.register(
            "model_bytes_sent",
            "Model bundle bytes served over QUIC",
            model_bytes_sent.clone(),
        );
        registry.register(
            "envelopes_refused",
            "Envelopes refused, by reason",
            refused.clone(),
        );
        registry.register(
            "events_new",
            "Events stored for the first time",
            events_new.clone(),
        );
        registry.register(
            "events_duplicate",
            "Events received again (already stored)",
            events_duplicate.clone(),
        );
        registry.register(
            "events_foreign",
            "New events refused because they named another node's conversation",
            events_foreign.clone(),
        );
        registry.register("heartbeats", "Heartbeats received", heartbeats.clone());
        registry.register(
            "nodes_online",
            "Nodes currently online",
            nodes_online.clone(),
        );
        registry.register(
            "commands_sent",
            "Commands sent to nodes (including resends)",
            commands_sent.clone(),
        );
        registry.register(
            "commands_acked",
            "Commands acknowledged by nodes",
            commands_acked.clone(),
        );
        registry.register(
            "inbound_dropped",
            "Inbound messages dropped while processing was behind",
            inbound_dropped.clone(),
        );
        Metrics {
            registry,
            refused,
            events_new,
            events_duplicate,
            events_foreign,
            heartbeats,
            nodes_online,
            commands_sent,
            commands_acked,
            model_bytes_sent,
            inbound_dropped,
            broker_refused_by,
            broker_throttled,
            outgoing_dropped,
            handoff_dropped,
            relay_sent,
            relay_dropped,
            relay_received,
            forwarded,
        }
    }

    pub fn forward(&self, kind: &str) {
        self.forwarded
            .get_or_create(&vec![("kind".to_owned(), kind.to_owned())])
            .inc();
    }

    pub fn refuse(&self, reason: &str) {
        self.refused
            .get_or_create(&vec![("reason".to_owned(), reason.to_owned())])
            .inc();
    }

    pub fn broker_refused(&self, reason: &str) {
        self.broker_refused_by
            .get_or_create(&vec![("reason".to_owned(), reason.to_owned())])
            .inc();
    }

    pub fn broker_refused_count(&self, reason: &str) -> u64 {
        self.broker_refused_by
            .get_or_create(&vec![("reason".to_owned(), reason.to_owned())])
            .get()
    }

    pub fn refused_count(&self, reason: &str) -> u64 {
        self.refused
            .get_or_create(&vec![("reason".to_owned(), reason.to_owned())])
            .get()
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
