//! Online/offline tracking: an I/O-free state machine.
//!
//! Inputs: a node was heard from (any authenticated message, with the MQTT
//! connection it came over), its last will arrived, time passed. Outputs: the
//! transitions to record. A will only counts for the connection it was set on,
//! so a stale or replayed will cannot take a reconnected node offline.

use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    Online { node: String, reason: &'static str },
    Offline { node: String, reason: &'static str },
}

#[derive(Debug, Clone, Default)]
struct Live {
    online: bool,
    last_seen: i64,
    connect_id: String,
}

#[derive(Debug, Clone)]
pub struct Fleet {
    nodes: HashMap<String, Live>,
    timeout_ms: i64,
}

impl Fleet {
    pub fn new(timeout_ms: i64) -> Fleet {
        Fleet {
            nodes: HashMap::new(),
            timeout_ms,
        }
    }

    pub fn is_online(&self, node: &str) -> bool {
        self.nodes.get(node).is_some_and(|l| l.online)
    }

    /// The MQTT connection the node announced last (its `hello`).
    pub fn connect_id(&self, node: &str) -> Option<&str> {
        self.nodes
            .get(node)
            .map(|l| l.connect_id.as_str())
            .filter(|c| !c.is_empty())
    }

    /// A message from `node` at `now`; `connect_id` when it names its connection.
    pub fn heard(&mut self, node: &str, now: i64, connect_id: Option<&str>) -> Option<Transition> {
        let live = self.nodes.entry(node.to_owned()).or_default();
        live.last_seen = live.last_seen.max(now);
        if let Some(c) = connect_id {
            live.connect_id = c.to_owned();
        }
        if live.online {
            None
        } else {
            live.online = true;
            Some(Transition::Online {
                node: node.to_owned(),
                reason: "message",
            })
        }
    }

    /// The broker published `node`'s will for connection `connect_id`.
    pub fn will(&mut self, node: &str, connect_id: &str) -> Option<Transition> {
        let live = self.nodes.get_mut(node)?;
        if live.online && live.connect_id == connect_id {
            live.online = false;
            Some(Transition::Offline {
                node: node.to_owned(),
                reason: "last_will",
            })
        } else {
            None
        }
    }

    /// Mark nodes silent for longer than the timeout offline.
    pub fn tick(&mut self, now: i64) -> Vec<Transition> {
        let mut out = Vec::new();
        for (node, live) in self.nodes.iter_mut() {
            if live.online && now - live.last_seen > self.timeout_ms {
                live.online = false;
                out.push(Transition::Offline {
                    node: node.clone(),
                    reason: "heartbeat_timeout",
                });
            }
        }
        out.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
        out
    }

    /// Forget a node (revoked).
    pub fn remove(&mut self, node: &str) -> Option<Transition> {
        let live = self.nodes.remove(node)?;
        live.online.then(|| Transition::Offline {
            node: node.to_owned(),
            reason: "revoked",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn online_timeout_and_will() {
        let mut f = Fleet::new(1000);
        assert!(matches!(
            f.heard("a", 0, Some("c1")),
            Some(Transition::Online { .. })
        ));
        assert_eq!(f.heard("a", 500, None), None);
        assert!(f.tick(1400).is_empty());
        assert_eq!(f.tick(1501).len(), 1);
        assert!(!f.is_online("a"));
        f.heard("a", 2000, Some("c2"));
        assert_eq!(
            f.will("a", "c1"),
            None,
            "a will of an older connection is ignored"
        );
        assert!(f.is_online("a"));
        assert!(matches!(
            f.will("a", "c2"),
            Some(Transition::Offline {
                reason: "last_will",
                ..
            })
        ));
    }

    proptest! {
        /// Transitions alternate per node, and after any sequence a node is
        /// online iff its last transition was Online.
        #[test]
        fn transitions_alternate(ops in prop::collection::vec((0u8..3, 0usize..3, 0i64..5000), 1..80)) {
            let mut f = Fleet::new(1000);
            let mut last: HashMap<String, bool> = HashMap::new();
            let mut now = 0;
            for (op, n, dt) in ops {
                now += dt;
                let node = format!("n{n}");
                let ts = match op {
                    0 => f.heard(&node, now, Some(&format!("c{}", now % 3))).into_iter().collect::<Vec<_>>(),
                    1 => f.will(&node, &format!("c{}", now % 3)).into_iter().collect(),
                    _ => f.tick(now),
                };
                for t in ts {
                    let (node, online) = match t {
                        Transition::Online { node, .. } => (node, true),
                        Transition::Offline { node, .. } => (node, false),
                    };
                    let prev = last.insert(node.clone(), online).unwrap_or(false);
                    prop_assert_ne!(prev, online, "{} went {} twice", node, online);
                }
            }
            for (node, online) in last {
                prop_assert_eq!(f.is_online(&node), online);
            }
        }
    }
}
